"""User isolation enforced by NATS itself (auth callout on a real server):
a node holding user A's key cannot read, take or forge anything of user B."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from typing import Any

import nats
import pytest

from bus import node_permissions, objects
from bus.intake import doorbell_queue
from schemas import names
from schemas.keys import ApiKeyRecord, Role, hash_secret
from schemas.names import Lane
from tests.harness import TESTDATA, Gateway, connect_as_node, start_node, submit_file, wait_until

pytestmark = pytest.mark.timeout(120)


class Violations:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, e: Exception) -> None:
        self.seen.append(str(e))

    def about(self, subject: str) -> bool:
        return any("permissions violation" in s.lower() and subject.lower() in s.lower() for s in self.seen)


async def _as_node(server, key: str, owner: str, errors: Violations):
    return await connect_as_node(server, key, owner, error_cb=errors.record)


def _node_js(nc):
    """JetStream as a user node sees it: through its account's imports."""
    return nc.jetstream(prefix=node_permissions.NODE_JS_API)


async def test_node_of_a_cannot_touch_b(nats_server, gateway, user):
    a, b = user + "-a", user + "-b"
    key_a = gateway.create_key(a, roles=("node",))
    key_b = gateway.create_key(b)
    # Given B has a queued job and a staged file
    with gateway.client(key_b) as c:
        job_b = submit_file(c, TESTDATA / "hello.wav", gpu=False)
    svc = await nats.connect(nats_server.url)
    rec = await (await svc.jetstream().key_value(names.JOBS_BUCKET)).get(names.job_key(b, job_b["job_id"]))
    assert rec.value  # (the shared pool may or may not have run it; its file stays)
    b_file = names.input_object(job_b["job_id"], "hello.wav")
    await svc.jetstream().publish(names.job_subject(b, Lane.GPU, names.Kind.AUDIO), b"bait")

    errors = Violations()
    nc = await _as_node(nats_server, key_a, a, errors)
    js = _node_js(nc)
    try:
        # Positive control: A's node can use A's own consumer and bucket
        assert (await js.consumer_info(names.JOBS_STREAM, names.consumer_name(a, Lane.GPU))).name == f"gpu_{a}"

        # When it tries B's consumer, B's files, B's events, everyone's jobs and B's inbox
        psub = await js.pull_subscribe_bind(durable=names.consumer_name(b, Lane.GPU), stream=names.JOBS_STREAM)
        with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
            await psub.fetch(1, timeout=1)
        with pytest.raises((nats.errors.Error, TimeoutError)):  # refused: the request goes unanswered
            await asyncio.wait_for(objects.read_bytes(js, names.files_bucket(b), b_file), 3)
        await nc.publish(names.event_subject(b, job_b["job_id"]), b"forged")
        await nc.subscribe("jobs.>")
        await nc.subscribe(f"{node_permissions.inbox_prefix(b)}.>")
        await nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await nc.close()

    # Then NATS refused each one, and nothing of B's moved
    assert errors.about(node_permissions.node_api(f"CONSUMER.MSG.NEXT.JOBS.gpu_{b}")), errors.seen
    assert errors.about(f"OBJ_files-{b}"), errors.seen
    assert errors.about(f"events.{b}.{job_b['job_id']}"), errors.seen
    assert errors.about("jobs.>"), errors.seen
    assert errors.about(f"_INBOX_{b}.>"), errors.seen
    js_svc = svc.jetstream()
    info = await js_svc.consumer_info(names.JOBS_STREAM, names.consumer_name(b, Lane.GPU))
    assert info.num_pending == 1 and info.delivered.consumer_seq == 0  # the bait was never delivered
    evs = await js_svc.stream_info(names.EVENTS_STREAM, subjects_filter=f"events.{b}.>")
    assert all(subj.startswith(f"events.{b}.") for subj in (evs.state.subjects or {}))
    raw = (
        await js_svc.get_last_msg(names.EVENTS_STREAM, names.event_subject(b, job_b["job_id"]))
        if evs.state.subjects
        else None
    )
    assert raw is None or raw.data != b"forged"
    await svc.close()


async def test_node_hears_its_own_doorbells_and_pulls_its_own_priorities_only(nats_server, gateway, user):
    """Given nodes of A and B, when jobs of each are stored, then A's node
    hears A's doorbells (`queued.<a>.…`) and may pull A's high queue, and
    NATS refuses it B's doorbells and B's high queue."""
    a, b = user + "-a", user + "-b"
    key_a = gateway.create_key(a, roles=("node",))
    gateway.create_key(b)
    errors = Violations()
    nc = await _as_node(nats_server, key_a, a, errors)
    heard: list[Any] = []

    async def ring(msg) -> None:
        heard.append(msg)

    svc = await nats.connect(nats_server.url)
    try:
        await nc.subscribe(names.queued_filter(a, Lane.GPU), cb=ring)
        await nc.subscribe(names.queued_filter(b, Lane.GPU), cb=ring)
        b_high = names.LaneQueue(b, Lane.GPU, names.Priority.HIGH).consumer
        await nc.publish(node_permissions.node_api(f"CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{b_high}"), b"{}")
        await nc.flush()
        for owner in (a, b):  # bait no node takes: nothing of B's may reach A
            subject = names.job_subject(owner, Lane.GPU, "bait", priority=names.Priority.HIGH)
            await svc.jetstream().publish(subject, b"bait")
        await wait_async(lambda: heard, what="A's doorbell")
        await asyncio.sleep(0.3)
        a_high = names.LaneQueue(a, Lane.GPU, names.Priority.HIGH).consumer
        inbox = nc.new_inbox()
        answers = await nc.subscribe(inbox)
        await nc.publish(
            node_permissions.node_api(f"CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{a_high}"),
            json.dumps({"batch": 1, "no_wait": True}).encode(),
            reply=inbox,
        )
        answer = await answers.next_msg(timeout=2)  # no consumer made yet: 503, but an answer, not a violation
    finally:
        await nc.close()
        for owner in (a, b):
            await svc.jetstream().purge_stream(names.JOBS_STREAM, subject=f"jobs.{owner}.gpu.bait.high")
        await svc.close()
    assert [m.subject for m in heard] == [f"queued.{a}.gpu.bait.high"]
    assert doorbell_queue(heard[0]) == names.LaneQueue(a, Lane.GPU, names.Priority.HIGH)
    assert (answer.headers or {}).get("Status") in ("404", "503")
    assert errors.about(f"queued.{b}.gpu.>"), errors.seen
    assert errors.about(f"CONSUMER.MSG.NEXT.JOBS.{b_high}"), errors.seen


async def test_a_forged_doorbell_rings_nothing(nats_server, gateway, user):
    """Given A's node listening for its doorbells, when B's node publishes an
    event of its own with A's doorbell subject as the reply, then the
    server's answer does land there (the reason for the check), and it is
    not taken for a doorbell."""
    a, b = user + "-a", user + "-b"
    key_a, key_b = gateway.create_key(a, roles=("node",)), gateway.create_key(b, roles=("node",))
    nc_a = await connect_as_node(nats_server, key_a, a)
    nc_b = await connect_as_node(nats_server, key_b, b)
    try:
        landed = await nc_a.subscribe(names.queued_filter(a, Lane.CPU))
        await nc_a.flush()
        forged = names.job_subject(a, Lane.CPU, "noop").replace("jobs.", f"{names.QUEUED_PREFIX}.", 1)
        await nc_b.publish(names.event_subject(b, "j" + "0" * 32), b"{}", reply=forged)
        msg = await landed.next_msg(timeout=3)
    finally:
        await nc_a.close()
        await nc_b.close()
    assert msg.subject == forged
    assert doorbell_queue(msg) is None


async def wait_async(pred, *, what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_node_reads_a_multi_chunk_file_of_its_owner(nats_server, gateway, user, tmp_path):
    # Given a file of A's larger than one chunk (read by direct gets through the NODES account's imports)
    key = gateway.create_key(user, roles=("user", "node"))
    with gateway.client(key) as c:
        submit_file(c, TESTDATA / "hello.wav", gpu=False)  # creates A's file bucket
    data = bytes(range(256)) * (4 * objects.CHUNK_BYTES // 256 + 123)
    svc = await nats.connect(nats_server.url)
    await objects.put_bytes(svc.jetstream(), names.files_bucket(user), "big.bin", data)
    await svc.close()
    # When A's node identity reads it
    errors = Violations()
    nc = await _as_node(nats_server, key, user, errors)
    try:
        size = await objects.read_to_file(_node_js(nc), names.files_bucket(user), "big.bin", tmp_path / "big.bin")
    finally:
        await nc.close()
    # Then it has every byte and NATS refused nothing on the way
    assert size == len(data) and (tmp_path / "big.bin").read_bytes() == data
    assert not errors.seen


@pytest.mark.parametrize("secret", ["user-role", "garbage", "gpb_0123456789abcdef_" + "A" * 43])
async def test_connection_refused_without_a_node_key(nats_server, gateway, user, secret):
    if secret == "user-role":
        secret = gateway.create_key(user, roles=("user",))  # may submit jobs, may not run nodes
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_server.public_url, token=secret, allow_reconnect=False, connect_timeout=5)


def test_user_key_cannot_bootstrap_a_node(gateway, user):
    key = gateway.create_key(user, roles=("user",))
    with gateway.client(key) as c:
        r = c.post("/api/v1/nodes/bootstrap", json={"lane": "gpu"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"
        r = c.post("/api/v1/nodes/bootstrap", json={"lane": "cpu", "shared": True})
        assert r.status_code == 403


def test_revoked_key_is_refused_at_once_and_its_node_cut_off(fresh_nats, tmp_path):
    # Given a gateway (auth callout) and a running node
    gw = Gateway.on(fresh_nats, tmp_path, registry_ttl=3).start()
    try:
        key = gw.create_key("revokee")
        node = start_node(gw, "gpu", key=key, name="gpu-revokee")
        key_id = key[4:20]
        # When the key is revoked
        with gw.admin() as admin:
            assert admin.delete(f"/api/v1/auth/keys/{key_id}").json()["revoked_at"]
        # Then REST refuses it on the next request
        with gw.client(key) as c:
            assert c.get("/api/v1/jobs").status_code == 401
        # ...and its node is disconnected at once, cannot come back, and exits saying why
        node.proc.wait(20)
        assert node.proc.returncode != 0 and "NODE_CUT_OFF" in node.log()
        wait_until(lambda: not gw.live_nodes(), timeout_s=15, what="revoked node gone from the registry")
    finally:
        gw.stop()


def test_per_key_limits_active_jobs_429_and_upload_size_413(gateway, user):
    # Given a key limited to 2 unfinished jobs and 1 MiB uploads, and no node for its GPU lane
    with gateway.admin() as admin:
        r = admin.post(
            "/api/v1/auth/keys",
            json={"user_id": user, "roles": ["user", "node"], "max_active_jobs": 2, "max_upload_mb": 1},
        )
        key = r.json()["api_key"]
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    node.signal(signal.SIGSTOP)  # live in the registry (for a while), taking nothing
    try:
        with gateway.client(key) as c:
            wav = (TESTDATA / "hello.wav").read_bytes()  # 0.35 MiB
            for _ in range(2):
                assert c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"gpu": "true"}).status_code == 202
            # Then the third is refused with Retry-After, nothing staged
            r = c.post("/api/v1/jobs", files={"file": ("a.wav", wav)}, data={"gpu": "true"})
            assert (
                r.status_code == 429
                and r.json()["error"]["code"] == "RATE_LIMITED"
                and int(r.headers["Retry-After"]) > 0
            )
            # ...and the key's own upload limit applies (the gateway's is 8 MiB)
            for j in c.get("/api/v1/jobs").json()["jobs"]:
                c.post(f"/api/v1/jobs/{j['job_id']}/cancel")
            big = wav * 4
            r = c.post("/api/v1/jobs", files={"file": ("b.wav", big)})
            assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    finally:
        node.stop()


def test_keys_listing_never_shows_secrets_and_owner_can_revoke(gateway, user):
    key = gateway.create_key(user)
    other = gateway.create_key(user + "-x")
    with gateway.client(key) as c:
        keys = c.get("/api/v1/auth/keys").json()["keys"]
        assert [k["user_id"] for k in keys] == [user]
        assert not any("sha256" in str(k) or key[21:] in str(k) for k in keys), keys
        assert c.delete(f"/api/v1/auth/keys/{other[4:20]}").status_code == 404  # not theirs: not found
        assert c.post("/api/v1/auth/validate-key").json()["user_id"] == user
        assert c.delete(f"/api/v1/auth/keys/{key[4:20]}").status_code == 200
        assert c.get("/api/v1/jobs").status_code == 401
    with gateway.client(other) as c:
        assert c.get("/api/v1/jobs").status_code == 200


# -- reply subjects ------------------------------------------------------------
# NATS checks a publish permission on the subject only; the JetStream API
# answers on whatever reply subject a request carries. A node must not be able
# to use that to have the server write anywhere trusted (review 2026-12-01, F1).


async def _plant(nc, bucket: str, name: str, payload: bytes) -> str:
    """Node-written bytes in the node's own bucket, for DIRECT.GET to echo back."""
    subject = f"$O.{bucket}.C.{name}"
    await nc.request(subject, payload, timeout=5)
    return subject


def _requests(owner: str, bucket: str, planted: str) -> list[tuple[str, bytes]]:
    """Every kind of request a node of `owner` may send, each answered by the server."""
    files = names.object_stream(bucket)
    api = node_permissions.node_api
    gpu = names.consumer_name(owner, Lane.GPU)
    return [
        (api(f"DIRECT.GET.{files}.{planted}"), b""),
        (api(f"DIRECT.GET.{files}"), json.dumps({"last_by_subj": planted}).encode()),
        (api(f"STREAM.MSG.GET.{files}"), json.dumps({"last_by_subj": planted}).encode()),
        (api(f"STREAM.INFO.{files}"), b""),
        (api(f"STREAM.INFO.{names.kv_stream(names.NODES_BUCKET)}"), b""),
        (api(f"STREAM.PURGE.{files}"), json.dumps({"filter": f"$O.{bucket}.C.nothing-here"}).encode()),
        (api(f"CONSUMER.INFO.{names.JOBS_STREAM}.{gpu}"), b""),
        (api(f"CONSUMER.MSG.NEXT.{names.JOBS_STREAM}.{gpu}"), json.dumps({"batch": 1, "no_wait": True}).encode()),
        (f"events.{owner}.j{'0' * 32}", b"\x80"),
        (f"$KV.{names.NODES_BUCKET}.{owner}.cpu.probe", b"{}"),
        (f"$O.{bucket}.C.probe", b"probe"),
    ]


async def _nothing_at(js_svc, stream: str, subject: str) -> bool:
    try:
        await js_svc.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return True
    return False


async def test_no_reply_subject_lets_a_node_write_trusted_state(nats_server, gateway, user):
    a, b = user + "-a", user + "-b"
    key_a = gateway.create_key(a, roles=("node",))
    with gateway.client(key_a) as c:  # creates A's consumers and bucket
        assert c.post("/api/v1/nodes/bootstrap", json={"lane": "gpu"}).status_code == 200
    svc = await nats.connect(nats_server.url)
    js_svc = svc.jetstream()
    canary = f"CANARY_{uuid.uuid4().hex[:12]}"
    await js_svc.add_stream(name=canary, subjects=[f"canary.{canary}"])
    await js_svc.publish(f"canary.{canary}", b"alive")
    jobs_before = (await js_svc.stream_info(names.JOBS_STREAM)).state.last_seq
    stolen_id, job_b = uuid.uuid4().hex[:16], "j" + uuid.uuid4().hex
    captured = {  # reply subject -> the trusted stream that would store it
        f"$KV.{names.APIKEYS_BUCKET}.{stolen_id}": names.kv_stream(names.APIKEYS_BUCKET),
        f"$KV.{names.JOBS_BUCKET}.{b}.{job_b}": names.kv_stream(names.JOBS_BUCKET),
        f"$KV.{names.NODES_BUCKET}.{b}.cpu.spoof": names.kv_stream(names.NODES_BUCKET),
        names.event_subject(b, job_b): names.EVENTS_STREAM,
        f"jobs.{names.SHARED}.cpu.audio.{a}": names.JOBS_STREAM,
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.cpu_{b}": names.DEADLETTER_STREAM,
    }
    api_replies = [f"$JS.API.STREAM.PURGE.{canary}", f"$JS.API.STREAM.DELETE.{canary}"]
    # Given node-written bytes that would be a valid key of B's if stored
    forged_key = ApiKeyRecord(
        key_id=stolen_id,
        user_id=b,
        roles=[Role.NODE, Role.USER],
        secret_sha256=hash_secret("stolen"),
        created_at=time.time(),
    )
    errors = Violations()
    nc = await _as_node(nats_server, key_a, a, errors)
    try:
        planted = await _plant(nc, names.files_bucket(a), "forged", forged_key.model_dump_json().encode())
        requests = _requests(a, names.files_bucket(a), planted)
        for subject, body in requests:  # (each is allowed and answered: the probe is real)
            assert (await nc.request(subject, body, timeout=5)) is not None, subject
        # When every request it may send goes out with every trusted reply subject
        for subject, body in requests:
            for reply in [*captured, *api_replies]:
                await nc.publish(subject, body, reply=reply)
        await nc.flush()
        await asyncio.sleep(1.0)
    finally:
        await nc.close()
    # Then nothing landed anywhere trusted, and nothing trusted changed
    for reply, stream in captured.items():
        assert await _nothing_at(js_svc, stream, reply), f"{reply} was written into {stream}"
    assert (await js_svc.stream_info(names.JOBS_STREAM)).state.last_seq == jobs_before
    assert (await js_svc.stream_info(canary)).state.messages == 1
    with gateway.client(f"gpb_{stolen_id}_stolen") as c:
        assert c.post("/api/v1/auth/validate-key").status_code == 401
    await js_svc.delete_stream(canary)
    await svc.close()
