"""Where a result is stored (bus/result_store.py): a small one inside its
`succeeded` event, read back by sequence and checked against the digest in
the record; a large one (here: a node told to inline nothing) in the owner's
bucket. Real nats-server, gateway and node processes."""

from __future__ import annotations

import pytest

from bus import objects
from bus.jobstore import JobStore
from bus.sealing import RecordSeal
from schemas import names
from schemas.errors import NotFound
from tests.harness import ADMIN_TOKEN, TESTDATA, start_node, submit_file, wait_job

pytestmark = pytest.mark.timeout(180)


async def _jobs(gateway) -> tuple[object, JobStore]:
    import nats

    nc = await nats.connect(gateway.nats_url, token=ADMIN_TOKEN)
    js = nc.jetstream()
    return nc, JobStore(await js.key_value(names.JOBS_BUCKET), RecordSeal.from_secret(ADMIN_TOKEN), js=js)


async def test_a_small_result_rides_in_its_event_and_reads_back(gateway, shared_cpu_node, user):
    # Given a short transcription on the shared CPU pool
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = wait_job(c, submit_file(c, TESTDATA / "hello.wav")["job_id"], timeout_s=120)
        assert job["status"] == "succeeded", job
        # Then its result is served in every format...
        r = c.get(f"/api/v1/jobs/{job['job_id']}/result")
        assert r.status_code == 200 and "weather" in r.json()["text"].lower(), r.text
        assert "-->" in c.get(f"/api/v1/jobs/{job['job_id']}/result?format=srt").text
    # ...from the event: the record points at it, and no result object was written
    nc, jobs = await _jobs(gateway)
    try:
        rec, _ = await jobs.get(user, job["job_id"])
        assert rec.result_event_seq and rec.result_sha256 and rec.result_object is None, rec
        with pytest.raises(NotFound):
            await objects.object_info(nc.jetstream(), names.files_bucket(user), names.result_object(rec.job_id, 1))
        # When the record names a digest the event does not have
        await jobs.update(user, rec.job_id, lambda r: r.model_copy(update={"result_sha256": "0" * 64}))
    finally:
        await nc.close()
    # Then the result route says the stored result is unreadable (409), never serves it
    with gateway.client(key) as c:
        r = c.get(f"/api/v1/jobs/{job['job_id']}/result")
        assert r.status_code == 409 and r.json()["error"]["code"] == "RESULT_UNREADABLE", r.text


async def test_a_result_over_the_inline_limit_goes_to_the_object_store(gateway, user):
    # Given the user's node, told to inline nothing (as a result over the limit is)
    key = gateway.create_key(user, roles=("user", "node"))
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}", inline_result_max=0)
    try:
        with gateway.client(key) as c:
            job = wait_job(c, submit_file(c, TESTDATA / "hello.wav", gpu=True)["job_id"], timeout_s=120)
            assert job["status"] == "succeeded" and job["lane"] == "gpu", job
            # Then the record names the attempt's object, and the result reads back from it
            assert job["result_object"] == names.result_object(job["job_id"], 1), job
            r = c.get(f"/api/v1/jobs/{job['job_id']}/result")
            assert r.status_code == 200 and "weather" in r.json()["text"].lower(), r.text
    finally:
        node.stop()
