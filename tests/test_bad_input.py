"""Bad input gets a clear error; nothing already accepted is lost."""

from __future__ import annotations

import asyncio
import io
import zipfile

import nats
import pytest

from schemas import names
from tests.harness import TESTDATA, start_node, submit_file, wait_job, wait_until

pytestmark = pytest.mark.timeout(120)


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def test_garbage_file_fails_with_code_and_node_goes_on(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        bad = submit_file(c, TESTDATA / "garbage.bin")
        good = submit_file(c, TESTDATA / "hello.wav")
        failed = wait_job(c, bad["job_id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "DECODE_FAILED" and failed["error"]["message"]
        _error(c.get(f"/api/v1/jobs/{bad['job_id']}/result"), 409, "CONFLICT")
        assert wait_job(c, good["job_id"])["status"] == "succeeded"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer gpb_0000000000000000_" + "x" * 43},  # well-formed, unknown
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "gpb_nope"},
        {},  # anonymous is off by default
    ],
)
def test_bad_or_missing_key_is_401_never_anonymous(gateway, headers):
    with gateway.client(None) as c:
        r = c.post("/api/v1/jobs", files={"file": ("a.wav", (TESTDATA / "hello.wav").read_bytes())}, headers=headers)
        _error(r, 401, "UNAUTHORIZED")
        _error(c.get("/api/v1/jobs", headers=headers), 401)


def test_body_that_does_not_validate_is_422(gateway, user):
    key = gateway.create_key(user)
    wav = (TESTDATA / "hello.wav").read_bytes()
    with gateway.client(key) as c:
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"options": "{nope"}), 422, "INVALID_INPUT")
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"options": '{"task": "dance"}'}), 422)
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"options": '{"colour": 1}'}), 422)
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"gpu": "maybe"}), 422)
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"kind": "spreadsheet"}), 422)
        _error(c.post("/api/v1/jobs", files={"other": ("a.wav", wav)}), 422)
        _error(c.post("/api/v1/jobs", files={"file": ("a.wav", b"")}), 422)
        _error(c.post("/api/v1/jobs", json={"colour": "blue"}), 422)
        _error(c.post("/api/v1/jobs", content=b"hello", headers={"content-type": "text/plain"}), 415)
        _error(c.get("/api/v1/jobs/not-a-job"), 404, "NOT_FOUND")
        _error(c.get("/api/v1/jobs?limit=0"), 422)
        assert c.get("/api/v1/jobs").json()["jobs"] == []  # nothing was queued by any of that


def test_what_no_processor_takes_is_415_and_leaves_nothing(gateway, user):
    key = gateway.create_key(user)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("setup.sh", "echo not an office file\n" * 10_000)
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 200_000
    with gateway.client(key) as c:
        for name, data in [("doc.wav", elf), ("report.docx", archive.getvalue()), ("a.gif", b"GIF89a" + bytes(9000))]:
            _error(c.post("/api/v1/jobs", files={"file": (name, data)}), 415, "UNSUPPORTED_MEDIA")
    assert _objects(gateway.nats_url, user) == []


def test_oversize_upload_is_413_and_leaves_no_object(gateway, user):
    key = gateway.create_key(user)  # the session gateway allows 8 MiB
    big = io.BytesIO(b"RIFF" + b"\0" * (9 * 1024 * 1024))
    with gateway.client(key) as c:
        _error(c.post("/api/v1/jobs", files={"file": ("big.wav", big)}), 413, "PAYLOAD_TOO_LARGE")
        assert c.get("/api/v1/jobs").json()["jobs"] == []
    assert _objects(gateway.nats_url, user) == []


def _objects(nats_url: str, owner: str) -> list[tuple[str, int]]:
    """Every message left in the owner's object store stream (chunks or meta)."""

    async def count():
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(f"OBJ_{names.files_bucket(owner)}", subjects_filter=">")
            return sorted((info.state.subjects or {}).items())
        finally:
            await nc.close()

    return asyncio.run(count())


def test_garbage_message_on_job_subject_is_termed_counted_node_alive(gateway, user):
    # Given a user's GPU node
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    try:
        # When garbage and a forged job for another owner land on its subject
        async def publish():
            nc = await nats.connect(gateway.nats_url)
            js = nc.jetstream()
            await js.publish(names.job_subject(user, names.Lane.GPU, names.Kind.AUDIO), b"\xc1garbage")
            await js.publish(names.job_subject(user, names.Lane.GPU, names.Kind.AUDIO), b"\x81\xa1v\x01")
            await nc.close()

        asyncio.run(publish())
        # Then both are termed (not redelivered), counted, and the node still works
        metrics_url = next(n["metrics_url"] for n in gateway.live_nodes() if n["owner"] == user)
        import httpx

        def bad_count() -> float:
            for line in httpx.get(metrics_url).text.splitlines():
                if line.startswith("gpubus_node_bad_messages_total{"):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        wait_until(lambda: bad_count() == 2.0, timeout_s=20, what="2 bad messages counted")
        with gateway.client(key) as c:
            job = submit_file(c, TESTDATA / "hello.wav", gpu=True)
            assert job["lane"] == "gpu"
            assert wait_job(c, job["job_id"])["status"] == "succeeded"
        assert node.alive()
        assert _consumer_pending(gateway.nats_url, names.consumer_name(user, names.Lane.GPU)) == (0, 0)
    finally:
        node.stop()


def _consumer_pending(nats_url: str, consumer: str) -> tuple[int, int]:
    async def get():
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().consumer_info(names.JOBS_STREAM, consumer)
            return info.num_pending, info.num_ack_pending
        finally:
            await nc.close()

    return asyncio.run(get())
