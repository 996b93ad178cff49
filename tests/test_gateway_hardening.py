"""The gateway findings of the 2026-12-01 security review (F3, F8-F13, F15,
F16, F19), each reproduced against a real gateway on a real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest

from bench.common import RssSampler
from bus.jobstore import JobStore, decode_job_record
from bus.sealing import RecordSeal
from ops import cli, cli_support, service_commands
from ops.embedded_nats import NatsServer, free_port
from ops.exits import UsageError
from ops.private_files import private_dir, write_private
from schemas import codec, names
from schemas.jobs import JobStatus
from testkit.records import noop_record
from tests.harness import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    TESTDATA,
    Gateway,
    Proc,
    base_env,
    submit_file,
    wait_until,
)
from tests.test_up_and_cli import cli as run_cli

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
WAV = (TESTDATA / "hello.wav").read_bytes()


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"], err
    if code:
        assert err["code"] == code, err
    return err


# -- F3: no body is buffered before authentication --------------------------


def post_big_body(port: int, path: str, total: int, *, chunked: bool, key: str | None = None) -> int | None:
    """POST `total` bytes of JSON-ish junk, as a client that keeps sending
    while it waits; the status line it got, or None if the connection was
    cut before any answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    piece = b"a" * 65536
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece

    def pump() -> None:
        try:
            for _ in range(total // len(piece)):
                sock.sendall(frame)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the gateway stopped listening: what it should do
            pass

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        head = sock.recv(4096)
    except OSError:
        head = b""
    sender.join(60)
    sock.close()
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "path, with_key",
    [("/api/v1/auth/keys", False), ("/api/v1/nodes/bootstrap", False), ("/api/v1/jobs", True), ("/process/url", True)],
)
def test_big_json_body_is_refused_unbuffered(gateway, user, path, with_key, chunked):
    # Given the gateway, warmed up on the same route (no key, or a user's key)
    key = gateway.create_key(user) if with_key else None
    assert post_big_body(gateway.port, path, 65536, chunked=chunked, key=key) in (401, 413, 422)
    # When 64 MB arrive
    with RssSampler({"gateway": gateway.proc.pid}, interval_s=0.01) as rss:
        status = post_big_body(gateway.port, path, 64 * 2**20, chunked=chunked, key=key)
    # Then it is refused, and never held in memory
    growth = rss.growth_mb("gateway")
    print(f"{path} key={with_key} chunked={chunked}: {status}, RSS +{growth:.1f} MB")
    assert status in (413, 401), status
    assert growth < 8, f"gateway RSS grew {growth:.1f} MB"


def test_refused_body_has_the_json_error_shape_and_small_json_still_works(gateway, user):
    with gateway.admin() as admin:
        _error(
            admin.post(
                "/api/v1/auth/keys",
                content=b'{"user_id": "' + b"a" * 70_000 + b'"}',
                headers={"Content-Type": "application/json"},
            ),
            413,
            "PAYLOAD_TOO_LARGE",
        )
        key = admin.post("/api/v1/auth/keys", json={"user_id": user, "roles": ["user"]})
        assert key.status_code == 201, key.text
    with gateway.client(key.json()["api_key"]) as c:
        _error(
            c.post("/process/url", json={"url": "https://example.com/a.mp3", "initial_prompt": "x" * 70_000}),
            413,
            "PAYLOAD_TOO_LARGE",
        )
        _error(c.post("/api/v1/ingest/url", json={"url": "https://example.com/" + "a" * 70_000}), 413)
    with gateway.client(None) as anon:  # and no key is still a 401, never anonymous
        _error(anon.post("/api/v1/jobs", json={"url": "https://example.com/a.mp3"}), 401, "UNAUTHORIZED")


# -- F8: consumers go with the request that made them; SSE streams are capped --


LISTING_REACH = 100  # the gateway's GPUBUS_LISTING_REACH, its least
STREAM_CAP = 3


@pytest.fixture(scope="module")
def capped_gateway(nats_server: NatsServer, workdir: Path) -> Iterator[Gateway]:
    """A second gateway on the session's server, with a small SSE cap and a
    short reach for listings by status."""
    gw = Gateway.on(nats_server, workdir, max_event_streams=STREAM_CAP, listing_reach=LISTING_REACH).start()
    yield gw
    gw.stop()


async def _consumer_counts(server: NatsServer) -> dict[str, int]:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        streams = (names.kv_stream(names.JOBS_BUCKET), names.EVENTS_STREAM)
        return {s: len(await js.consumers_info(s)) for s in streams}
    finally:
        await nc.close()


def consumer_counts(server: NatsServer) -> dict[str, int]:
    return asyncio.run(_consumer_counts(server))


def _near(counts: dict[str, int], baseline: dict[str, int]) -> bool:
    return all(counts[s] <= baseline[s] + 1 for s in baseline)


@dataclass
class OpenStream:
    """An event stream, open until `close` (the line iterator is kept: once
    collected, httpx closes the connection under it)."""

    client: httpx.Client
    response: httpx.Response
    lines: Iterator[str] | None = None

    @property
    def status(self) -> int:
        return self.response.status_code

    def close(self) -> None:
        self.response.close()
        self.client.close()


def open_sse(gw: Gateway, key: str, job_id: str) -> OpenStream:
    """An event stream of the job, its first `state` event read when it is served."""
    c = gw.client(key)
    s = OpenStream(c, c.send(c.build_request("GET", f"/api/v1/jobs/{job_id}/events"), stream=True))
    if s.status == 200:
        s.lines = s.response.iter_lines()
        assert next(s.lines).startswith("event: state")
    else:
        s.response.read()
    return s


def test_lists_and_closed_event_streams_leave_no_consumers(capped_gateway, nats_server, user):
    gw = capped_gateway
    key = gw.create_key(user)
    with gw.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")  # no node for it: it stays queued
    baseline = consumer_counts(nats_server)
    # When the user lists their jobs 30 times and opens and closes 3 event streams, 3 times over
    with gw.client(key) as c:
        for _ in range(30):
            assert c.get("/api/v1/jobs").status_code == 200
    for _ in range(3):
        streams = [open_sse(gw, key, job["job_id"]) for _ in range(STREAM_CAP)]
        assert [s.status for s in streams] == [200] * STREAM_CAP
        for s in streams:
            s.close()
    # Then within a few seconds the consumers are back to the baseline (nats-py's default kept them 300 s)
    t0 = time.monotonic()
    wait_until(
        lambda: _near(consumer_counts(nats_server), baseline),
        timeout_s=5,
        interval_s=0.5,
        what=f"consumers back to {baseline} (now {consumer_counts(nats_server)})",
    )
    print(f"consumers {baseline} -> back after {time.monotonic() - t0:.1f} s")


async def _records(url: str, owner: str, statuses: list[JobStatus]) -> None:
    """The owner's jobs in this order, their records made as a gateway makes them."""
    nc = await nats.connect(url, token=ADMIN_TOKEN)
    try:
        js = nc.jetstream()
        store = JobStore(await js.key_value(names.JOBS_BUCKET), RecordSeal.from_secret(ADMIN_TOKEN), js=js)
        for status in statuses:
            await store.create(noop_record(owner, status=status))
    finally:
        await nc.close()


def test_a_listing_by_status_reads_the_latest_jobs_only_and_says_so(capped_gateway, nats_server, user):
    # Given an owner whose one failure is older than the listing reach's worth of jobs
    many = LISTING_REACH + 50
    asyncio.run(_records(nats_server.url, user, [JobStatus.FAILED] + [JobStatus.SUCCEEDED] * many))
    key = capped_gateway.create_key(user)
    with capped_gateway.client(key) as c:
        # When they list their failures
        failed = c.get("/api/v1/jobs", params={"status": "failed", "limit": 10}).json()
        # Then the old one is not read, and the answer says older jobs were left unread
        assert (failed["jobs"], failed["total"], failed["complete"]) == ([], many + 1, False)
        # And a status found within the reach is a complete answer, as is a listing of every status
        succeeded = c.get("/api/v1/jobs", params={"status": "succeeded", "limit": 10}).json()
        assert (len(succeeded["jobs"]), succeeded["complete"]) == (10, True)
        everything = c.get("/api/v1/jobs", params={"limit": 1000}).json()
        assert (len(everything["jobs"]), everything["complete"]) == (many + 1, True)
        assert everything["jobs"][-1]["status"] == "failed"
    # And the CLI's listing says it looked among the latest jobs only
    env = base_env(nats_server.url, gateway_url=capped_gateway.url, api_key=key)
    listed = run_cli("jobs", "list", "--status", "failed", env=env)
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr
    assert f"among your latest jobs only: {many + 1} in all" in listed.stderr


def test_one_event_stream_over_the_cap_is_429(capped_gateway, user):
    gw = capped_gateway
    key = gw.create_key(user)
    with gw.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")
    streams = [open_sse(gw, key, job["job_id"]) for _ in range(STREAM_CAP)]
    try:
        assert [s.status for s in streams] == [200] * STREAM_CAP
        # When one more opens while those are open, it is refused with Retry-After
        extra = open_sse(gw, key, job["job_id"])
        extra.close()
        _error(extra.response, 429, "RATE_LIMITED")
        assert int(extra.response.headers["Retry-After"]) > 0
    finally:
        for s in streams:
            s.close()

    # And once they are closed, a new one is served again
    def served() -> bool:
        s = open_sse(gw, key, job["job_id"])
        s.close()
        return s.status == 200

    wait_until(served, timeout_s=5, what="a stream slot given back")


# -- F9: a node key does not manage its owner's keys ---------------------------


def test_node_only_key_cannot_list_or_revoke_its_owners_keys(gateway, user):
    user_key = gateway.create_key(user, roles=("user",))
    node_key = gateway.create_key(user, roles=("node",))
    with gateway.client(node_key) as node:
        _error(node.get("/api/v1/auth/keys"), 403, "FORBIDDEN")
        _error(node.delete(f"/api/v1/auth/keys/{user_key[4:20]}"), 403, "FORBIDDEN")
    with gateway.client(user_key) as c:  # the user key still works, and sees both
        assert len(c.get("/api/v1/auth/keys").json()["keys"]) == 2
    with gateway.client(node_key) as node:  # a node key may retire itself
        assert node.delete(f"/api/v1/auth/keys/{node_key[4:20]}").status_code == 200
        _error(node.post("/api/v1/auth/validate-key"), 401, "UNAUTHORIZED")


# -- F10: no NATS password in the gateway's log ------------------------------


def test_gateway_log_never_shows_the_nats_service_password(gateway, nats_server):
    log = gateway.proc.log()
    assert f"connected to nats://127.0.0.1:{nats_server.port}" in log
    assert nats_server.auth.service_password not in log
    assert nats_server.auth.system_password not in log


# -- F10, F11: `gpubus up`: secrets private from creation, none on the console --


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_nats_config_is_private_from_creation(fresh_nats):
    assert _mode(fresh_nats.config_path) == 0o600
    assert fresh_nats.auth.service_password in fresh_nats.config_path.read_text()
    assert _mode(fresh_nats.store_dir) == 0o700


def test_private_files_narrow_what_already_exists(tmp_path):
    old = tmp_path / "secret"
    old.write_text("old")
    old.chmod(0o644)
    loose = tmp_path / "dir"
    loose.mkdir(mode=0o755)
    previous = os.umask(0)  # not even a permissive umask widens them
    try:
        write_private(old, "new")
        write_private(tmp_path / "fresh", "x")
        private_dir(loose)
        private_dir(tmp_path / "made")
    finally:
        os.umask(previous)
    assert old.read_text() == "new" and _mode(old) == 0o600 and _mode(tmp_path / "fresh") == 0o600
    assert _mode(loose) == 0o700 and _mode(tmp_path / "made") == 0o700


@pytest.mark.timeout(150)
def test_up_keeps_its_secrets_private_and_off_the_console(tmp_path):
    # Given `gpubus up` on a fresh data dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    data = tmp_path / "data"
    env.update(GPUBUS_DATA_DIR=str(data), GPUBUS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    up = Proc(["up", "--port", str(free_port())], env, tmp_path / "up.log").start()
    try:
        wait_until((data / "up.json").exists, timeout_s=90, what="up.json", proc=up)
        wait_until(lambda: "details:" in up.log(), timeout_s=10, what="the banner", proc=up)
        auth = json.loads((data / "nats_auth.json").read_text())
        # Then the banner shows the NATS URL, but no password
        log = up.log()
        assert "nats:    nats://127.0.0.1:" in log
        assert auth["service_password"] not in log and auth["system_password"] not in log
        # And the data dir is 0700, every secret file 0600
        assert _mode(data) == 0o700 and _mode(data / "nats") == 0o700
        for name in ("nats/gpubus-0.conf", "nats_auth.json", "admin_token", "up.json"):
            assert _mode(data / name) == 0o600, name
    finally:
        up.stop(60)


# -- F12: /metrics needs the admin token ---------------------------------------


def test_metrics_need_the_admin_token(gateway, user):
    key = gateway.create_key(user)
    _error(httpx.get(f"{gateway.url}/metrics"), 401, "UNAUTHORIZED")
    _error(httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {key}"}), 403, "FORBIDDEN")
    r = httpx.get(f"{gateway.url}/metrics", headers=ADMIN_HEADERS)
    assert r.status_code == 200 and "gpubus_http_request_duration_seconds" in r.text


def test_prometheus_sends_the_admin_token_to_the_gateway():
    import yaml

    config = yaml.safe_load((REPO / "ops" / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "gpubus-gateway"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/gpubus_admin_token"}


# -- F13: the active-job limit holds under parallel submissions ---------------


async def _submit_parallel(url: str, key: str, n: int) -> Counter:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        # gpu "required": the GPU lane, where no node of this user runs (the
        # suite's shared CPU node would finish a job and free a slot)
        form = {"gpu": "required"}
        answers = await asyncio.gather(
            *(c.post("/api/v1/jobs", files={"file": ("a.wav", WAV)}, data=form) for _ in range(n))
        )
    return Counter(r.status_code for r in answers)


def test_twenty_parallel_submits_against_a_limit_of_five_admit_five(gateway, user):
    # Given a key limited to 5 unfinished jobs, and no node for them
    key = gateway.create_key(user, max_active_jobs=5)
    # When it submits 20 at once
    answers = asyncio.run(_submit_parallel(gateway.url, key, 20))
    # Then exactly 5 are admitted, and 5 are queued
    assert answers == Counter({202: 5, 429: 15}), answers
    with gateway.client(key) as c:
        assert c.get("/api/v1/jobs").json()["total"] == 5


# -- F15: a node's key off the command line -----------------------------------


def test_node_key_from_a_file_or_the_environment_and_a_warning_for_argv(tmp_path, monkeypatch, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("gpb_fromfile_secret\n")
    args = cli.build_parser().parse_args(["cpu-node", "--api-key-file", str(key_file)])
    assert service_commands.node_api_key(args) == "gpb_fromfile_secret"
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("GPUBUS_API_KEY", "gpb_fromenv_secret")
    args = cli.build_parser().parse_args(["gpu-node"])
    assert service_commands.node_api_key(args) is None  # nothing overrides the environment
    assert (
        cli_support.settings_from(args, api_key=service_commands.node_api_key(args)).api_key.get_secret_value()
        == "gpb_fromenv_secret"
    )

    args = cli.build_parser().parse_args(["gpu-node", "--api-key", "gpb_inargv_secret"])
    assert service_commands.node_api_key(args) == "gpb_inargv_secret"
    assert "--api-key-file" in capsys.readouterr().err

    with pytest.raises(UsageError):  # one or the other
        cli.build_parser().parse_args(["cpu-node", "--api-key", "k", "--api-key-file", str(key_file)])
    assert "--api-key gpb_" not in (REPO / "README.md").read_text()


# -- F16: crafted input is a 4xx, a disconnect is quiet -----------------------


def test_multipart_boundary_over_256_chars_is_422(gateway, user):
    key = gateway.create_key(user)
    boundary = "b" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    body += WAV[:1000] + f"\r\n--{boundary}--\r\n".encode()
    with gateway.client(key) as c:
        r = c.post("/api/v1/jobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    _error(r, 422, "INVALID_INPUT")


def test_deeply_nested_options_are_422(gateway, user):
    key = gateway.create_key(user)
    nested = '{"a":' * 10_000 + "1" + "}" * 10_000
    with gateway.client(key) as c:
        r = c.post("/api/v1/jobs", files={"file": ("a.wav", WAV)}, data={"options": nested})
    _error(r, 422, "INVALID_INPUT")


async def _point_result_at(server: NatsServer, owner: str, job_id: str) -> None:
    """What a node of the owner can make the materializer record: its job
    succeeded, with `result_object` naming an object that is no transcript
    (here the job's own input)."""
    nc = await nats.connect(server.url)
    try:
        kv = await nc.jetstream().key_value(names.JOBS_BUCKET)
        entry = await kv.get(names.job_key(owner, job_id))
        seal, where = RecordSeal.from_secret(ADMIN_TOKEN), f"$KV.{names.JOBS_BUCKET}.{entry.key}"
        rec = decode_job_record(seal, where, entry.value)
        rec.status, rec.result_object = JobStatus.SUCCEEDED, rec.input.object_name
        await kv.update(entry.key, seal.seal(where, codec.encode_record(rec)), last=entry.revision)
    finally:
        await nc.close()


def test_a_result_that_is_no_transcript_is_a_json_error(gateway, nats_server, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")
        asyncio.run(_point_result_at(nats_server, user, job["job_id"]))
        for fmt in ("json", "srt"):
            _error(c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"format": fmt}), 409, "RESULT_UNREADABLE")


def test_client_disconnect_mid_upload_is_logged_quietly(gateway, user):
    key = gateway.create_key(user)
    before = len(gateway.proc.log())
    # When a client sends half an upload and hangs up
    boundary = "xyz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'.encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(head) + len(WAV) + 100}\r\n\r\n".encode()
        + head
        + WAV[: len(WAV) // 2]
    )
    time.sleep(0.5)
    sock.close()
    # Then the gateway says so in one quiet line: no ERROR, no stack trace
    # from its HTTP side (the session's gateway also runs bus loops, which
    # may report on other tests' jobs meanwhile)
    wait_until(lambda: "client disconnected" in gateway.proc.log()[before:], timeout_s=10, what="the disconnect logged")
    lines = [json.loads(line) for line in gateway.proc.log()[before:].splitlines() if line.startswith("{")]
    http_side = [line for line in lines if not line.get("logger", "").startswith("gpubus.bus.")]
    assert not [line for line in http_side if line["level"] in ("error", "critical") or "exc" in line], lines


# -- F19: response headers, no CDN pages ----------------------------------------


def test_api_responses_are_not_cached_or_sniffed_and_docs_load_no_cdn(gateway, user):
    with gateway.admin() as admin:
        created = admin.post("/api/v1/auth/keys", json={"user_id": user, "roles": ["user"]})
        for r in (created, admin.get("/health"), httpx.get(f"{gateway.url}/api/v1/jobs"), admin.get("/openapi.json")):
            assert r.headers["cache-control"] == "no-store", (r.url, r.headers)
            assert r.headers["x-content-type-options"] == "nosniff", (r.url, r.headers)
        assert admin.get("/openapi.json").json()["paths"]
        _error(admin.get("/redoc"), 404)  # FastAPI's ReDoc page loads from a CDN: off
        docs = admin.get("/docs")  # Swagger UI from the gateway's own files (tests/test_openapi_docs.py)
        assert "script-src 'self'" in docs.headers["content-security-policy"]
        assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', docs.text)), docs.text
        assert admin.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
        web = admin.get("/")  # the web page keeps its own policy
        assert (
            web.headers["cache-control"] == "no-cache"
            and "default-src 'none'" in web.headers["content-security-policy"]
        )
