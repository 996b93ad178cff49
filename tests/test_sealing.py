"""Defence in depth behind the account wall: what only gateways write is
sealed, and every trusted reader refuses what is not (bus/sealing.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import nats
import pytest

from bus import objects
from bus.sealing import RecordSeal, SealBroken
from schemas import codec, names
from schemas.errors import NotFound
from schemas.jobs import JobMessage, StagedInput, now
from schemas.keys import ApiKeyRecord, Role, hash_secret
from schemas.names import Kind, Lane
from tests.harness import ADMIN_TOKEN, TESTDATA, start_node, submit_file, wait_job, wait_until

pytestmark = pytest.mark.timeout(120)


def test_a_seal_binds_the_bytes_and_where_they_are_stored():
    seal = RecordSeal.from_secret("s3cret")
    sealed = seal.seal("$KV.apikeys.k1", b'{"a":1}')
    assert seal.open("$KV.apikeys.k1", sealed) == b'{"a":1}'
    for where, stored in [
        ("$KV.apikeys.k2", sealed),  # replayed under another key
        ("$KV.apikeys.k1", sealed.replace(b'"a":1', b'"a":2')),  # altered
        ("$KV.apikeys.k1", b'{"a":1}'),  # never sealed
    ]:
        with pytest.raises(SealBroken):
            seal.open(where, stored)
    with pytest.raises(SealBroken):
        RecordSeal.from_secret("other").open("$KV.apikeys.k1", sealed)


async def test_a_key_record_not_sealed_by_a_gateway_authenticates_nobody(nats_server, gateway, user):
    # Given a well-formed key record for `user` written straight into KV (not by a gateway)
    key_id, secret = uuid.uuid4().hex[:16], "forged-secret"
    rec = ApiKeyRecord(
        key_id=key_id,
        user_id=user,
        roles=[Role.USER, Role.NODE],
        secret_sha256=hash_secret(secret),
        created_at=time.time(),
    )
    nc = await nats.connect(nats_server.url)
    kv = await nc.jetstream().key_value(names.APIKEYS_BUCKET)
    await kv.put(key_id, codec.encode_record(rec))
    # ...and a real key's sealed record copied under a new key id
    real = gateway.create_key(user)
    copied_id = uuid.uuid4().hex[:16]
    await kv.put(copied_id, (await kv.get(real[4:20])).value)
    await nc.close()
    # Then neither authenticates, over REST or NATS
    for forged in (f"gpb_{key_id}_{secret}", f"gpb_{copied_id}_{real[21:]}"):
        with gateway.client(forged) as c:
            assert c.post("/api/v1/auth/validate-key").status_code == 401
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(nats_server.public_url, token=forged, allow_reconnect=False, connect_timeout=5)
    with gateway.client(real) as c:  # the real key still works
        assert c.post("/api/v1/auth/validate-key").status_code == 200


async def test_forged_advisories_do_not_fail_or_move_anyones_job(nats_server, gateway, user):
    # Given a job of `user` queued on its GPU lane, where its (stopped) node takes nothing
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    node.signal(signal.SIGSTOP)
    try:
        with gateway.client(key) as c:
            job = submit_file(c, TESTDATA / "hello.wav", gpu=True)
        assert job["lane"] == "gpu", job
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        jobs_kv = await js.key_value(names.JOBS_BUCKET)
        seq = None
        for _ in range(100):  # noted just after the answer (bus/queueing.py)
            seq = json.loads((await jobs_kv.get(names.job_key(user, job["job_id"]))).value).get("stream_seq")
            if seq:
                break
            await asyncio.sleep(0.05)
        assert seq, "the job's stream sequence was never noted"
        # When advisories name its sequence on the wrong lane's consumer, on a consumer
        # that is no lane's, and its own lane's consumer for an unsealed copy of it
        unsealed = codec.encode(
            JobMessage(
                job_id=job["job_id"],
                owner=user,
                queue_owner=user,
                lane=Lane.GPU,
                kind=Kind.AUDIO,
                attempt=1,
                submitted_at=now(),
            )
        )
        copy = await js.publish(names.job_subject(user, Lane.GPU, Kind.AUDIO), unsealed)
        gpu, cpu = names.consumer_name(user, Lane.GPU), names.consumer_name(user, Lane.CPU)
        for consumer, s in [(cpu, seq), ("materializer", seq), (gpu, copy.seq)]:
            await js.publish(
                f"{names.MAX_DELIVERIES_SUBJECTS[:-1]}{consumer}",
                json.dumps({"consumer": consumer, "stream_seq": s, "deliveries": 5}).encode(),
            )
        await asyncio.sleep(1.5)
        # Then the job is still queued on its lane, attempt 1, its message still there
        with gateway.client(key) as c:
            rec = c.get(f"/api/v1/jobs/{job['job_id']}").json()
        assert rec["status"] == "queued" and rec["lane"] == "gpu" and rec["attempts"] == 1, rec
        assert (await js.get_msg(names.JOBS_STREAM, seq)).data
        await nc.close()
    finally:
        node.signal(signal.SIGCONT)
        node.stop()


async def test_the_shared_node_refuses_unsealed_jobs_and_foreign_inputs(nats_server, gateway, shared_cpu_node, user):
    # Given a real job of `user` that the shared node runs to the end (a live pool)
    key = gateway.create_key(user)
    victim = gateway.create_key(user + "-v")
    for k in (key, victim):  # (both buckets exist)
        with gateway.client(k) as c:
            staged = submit_file(c, TESTDATA / "hello.wav", gpu=False)
            assert wait_job(c, staged["job_id"])["status"] == "succeeded"
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    victim_input = StagedInput(
        bucket=names.files_bucket(user + "-v"),
        object_name=names.input_object(staged["job_id"], "hello.wav"),
        filename="hello.wav",
        size=1,
        sha256="0" * 64,
    )
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    subject = names.job_subject(names.SHARED, Lane.CPU, Kind.AUDIO, user)
    # When a job message without the gateways' seal, and a sealed one that
    # names another owner's file, reach the shared pool
    before = shared_cpu_node.log().count("terming bad job message")
    forged_ids = []
    for sealed, inp in [(False, None), (True, victim_input)]:
        forged_ids.append("j" + uuid.uuid4().hex)
        msg = JobMessage(
            job_id=forged_ids[-1],
            owner=user,
            queue_owner=names.SHARED,
            lane=Lane.CPU,
            kind=Kind.AUDIO,
            attempt=1,
            input=inp,
            submitted_at=now(),
        )
        payload = codec.encode(msg)
        headers = {"Gpubus-Seal": seal.tag(subject, payload)} if sealed else None
        await js.publish(subject, payload, headers=headers)

    # Then both are termed unrun: nothing is written into the user's bucket
    # and the node's bad-message counter counts them
    def termed() -> bool:
        return shared_cpu_node.log().count("terming bad job message") >= 2 + before

    wait_until(termed, timeout_s=20, what="the shared node terms both")
    log = shared_cpu_node.log()
    assert "not sealed" in log or "seal does not match" in log, log[-2000:]
    assert "is not its own" in log, log[-2000:]
    for job_id in forged_ids:
        with pytest.raises(NotFound):
            await objects.object_info(js, names.files_bucket(user), names.result_object(job_id, 1))
    await nc.close()
