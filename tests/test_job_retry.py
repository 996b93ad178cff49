"""`POST /api/v1/jobs/{id}/retry` and queueing an attempt (bus/queueing.py):
the user's GPU wish survives a CPU detour, and a publish that fails during
a retry (NATS killed, or the stream refusing the message) leaves a job that
a later retry runs. Real nats-server, real gateway and node processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator

import nats
import pytest

from bus import topology
from bus.jobstore import JobStore
from bus.publisher import ATTEMPT_TIMEOUT_S, JobPublisher
from bus.queueing import UNDO_MARGIN_S, PendingNotes, queue_attempt
from bus.sealing import RecordSeal
from bus.settings import Settings
from schemas import names
from schemas.jobs import JobRecord, JobStatus
from testkit.records import noop_record
from tests.harness import ADMIN_TOKEN, TESTDATA, Gateway, Proc, start_node, stop_all, submit_file, wait_job, wait_until

pytestmark = pytest.mark.timeout(240)
PUBLISH_TIMEOUT_S = 1


def test_a_gpu_job_routed_to_cpu_is_retried_on_gpu_once_a_gpu_node_is_live(gateway, shared_cpu_node, user):
    # Given a gpu=true job that went to the CPU pool for lack of a GPU node,
    # and failed there (German on the English-only model)
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav", gpu=True, options=json.dumps({"language": "de"}))
        assert (job["lane"], job["routed_reason"]) == ("cpu", "no_live_gpu_node")
        first = wait_job(c, job["job_id"], timeout_s=120)
        assert first["status"] == "failed" and first["gpu_requested"] is True, first

        # When the user's GPU node is live and the job is retried
        gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
        try:
            r = c.post(f"/api/v1/jobs/{job['job_id']}/retry")
            assert r.status_code == 202, r.text

            # Then the retry goes to the GPU lane, as the user asked
            assert (r.json()["lane"], r.json()["routed_reason"]) == ("gpu", "gpu_requested")
            final = wait_job(c, job["job_id"], timeout_s=120)
        finally:
            gpu.stop()
    assert final["attempts"] == 2 and final["lane"] == "gpu" and final["node_id"].startswith("gpu-"), final


@pytest.fixture
def own_gateway(fresh_nats, tmp_path) -> Iterator[tuple[Gateway, list[Proc]]]:
    """A gateway on a server of the test's own (the test breaks the server),
    and a list the test puts its nodes in, stopped with it."""
    gw = Gateway.on(fresh_nats, tmp_path, enable_noop="true", publish_timeout=PUBLISH_TIMEOUT_S).start()
    nodes: list[Proc] = []
    yield gw, nodes
    stop_all([*nodes, gw.proc])


def _cancelled_noop_job(c) -> str:
    """A job nobody can take yet (no node), cancelled: retryable."""
    job = c.post("/api/v1/jobs", json={"kind": "noop"}).json()
    assert c.post(f"/api/v1/jobs/{job['job_id']}/cancel").json()["status"] == "cancelled"
    return job["job_id"]


def _ready(gw: Gateway) -> bool:
    with gw.client(None) as c:
        try:
            return c.get("/ready", timeout=2).status_code == 200
        except Exception:
            return False


def _retried(c, job_id: str):
    r = c.post(f"/api/v1/jobs/{job_id}/retry")
    assert r.status_code in (202, 503), r.text  # 503 while the gateway still reconnects its stores
    return r if r.status_code == 202 else None


def test_a_retry_while_nats_is_down_fails_cleanly_and_a_later_retry_runs_the_job(own_gateway, fresh_nats, user):
    # Given a cancelled job on a gateway of our own
    gw, nodes = own_gateway
    with gw.client(gw.create_key(user)) as c:
        job_id = _cancelled_noop_job(c)

        # When NATS is killed and the job retried
        fresh_nats.kill()
        r = c.post(f"/api/v1/jobs/{job_id}/retry", timeout=30)

        # Then the retry is refused as "the bus is away" (nothing half done)
        assert r.status_code == 503 and r.headers["Retry-After"], r.text

        # And once NATS is back, a retry runs the job
        fresh_nats.start()
        wait_until(lambda: _ready(gw), timeout_s=30, what="gateway ready again")
        nodes.append(start_node(gw, "cpu", shared=True, name="cpu-shared", enable_noop="true"))
        wait_until(lambda: _retried(c, job_id), timeout_s=30, what="retry accepted")
        final = wait_job(c, job_id, timeout_s=60)
    assert final["status"] == "succeeded" and final["attempts"] == 2, final


@contextlib.asynccontextmanager
async def _trusted(url: str) -> AsyncIterator[tuple[object, JobStore]]:
    """JetStream and the job records as the gateway side sees them."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        yield js, JobStore(await js.key_value(names.JOBS_BUCKET), RecordSeal.from_secret(ADMIN_TOKEN), js=js)
    finally:
        await nc.close()


async def _jobs_stream_subjects(url: str, subjects: list[str]) -> None:
    """Point the JOBS stream elsewhere: every job publish then fails while
    KV (the records) keeps working."""
    async with _trusted(url) as (js, _):
        cfg = (await js.stream_info(names.JOBS_STREAM)).config
        cfg.subjects = subjects
        await js.update_stream(cfg)


async def _record(url: str, owner: str, job_id: str) -> JobRecord:
    async with _trusted(url) as (_, store):
        rec, _ = await store.get(owner, job_id)
        return rec


async def _leave_claim_unpublished(url: str, owner: str, job_id: str) -> None:
    """What the old retry left when its publish failed: the record says
    the next attempt is queued, and no message of it exists."""

    def claim(r: JobRecord) -> JobRecord:
        r.attempts, r.status, r.stream_seq, r.finished_at = r.attempts + 1, JobStatus.QUEUED, None, None
        return r

    async with _trusted(url) as (_, store):
        await store.update(owner, job_id, claim)


def test_a_refused_publish_undoes_the_retry_and_a_stuck_claim_is_retried(own_gateway, fresh_nats, user):
    gw, nodes = own_gateway
    with gw.client(gw.create_key(user)) as c:
        # Given two cancelled jobs, and a JOBS stream that refuses every job message
        refused, stuck = _cancelled_noop_job(c), _cancelled_noop_job(c)
        asyncio.run(_jobs_stream_subjects(fresh_nats.url, ["held.>"]))
        try:
            # When one is retried
            r = c.post(f"/api/v1/jobs/{refused}/retry", timeout=30)
            # Then the retry fails, and its record is the cancelled attempt 1 again
            assert r.status_code == 503, r.text
            rec = asyncio.run(_record(fresh_nats.url, user, refused))
            assert (rec.status, rec.attempts) == (JobStatus.CANCELLED, 1), rec
        finally:
            asyncio.run(_jobs_stream_subjects(fresh_nats.url, [names.JOBS_SUBJECTS]))

        # Given the other left queued with no message (a claim neither published nor undone)
        asyncio.run(_leave_claim_unpublished(fresh_nats.url, user, stuck))
        left_at = time.monotonic()
        # Then it is not retryable while a publish of it could still be trying
        assert c.post(f"/api/v1/jobs/{stuck}/retry").status_code == 409

        # When a node is up, the first is retried, and the stuck one once that time is past
        nodes.append(start_node(gw, "cpu", shared=True, name="cpu-shared", enable_noop="true"))
        assert c.post(f"/api/v1/jobs/{refused}/retry").status_code == 202
        time.sleep(max(0.0, PUBLISH_TIMEOUT_S + ATTEMPT_TIMEOUT_S + UNDO_MARGIN_S + 1 - (time.monotonic() - left_at)))
        r = c.post(f"/api/v1/jobs/{stuck}/retry")
        assert r.status_code == 202, r.text

        # Then both run
        assert wait_job(c, refused, timeout_s=60)["status"] == "succeeded"
        final = wait_job(c, stuck, timeout_s=60)
    assert final["status"] == "succeeded" and final["attempts"] == 3, final


async def test_a_job_cancelled_as_soon_as_it_is_accepted_leaves_no_message(own_gateway, user):
    # Given jobs that nobody can take (no node), each cancelled the moment
    # its 202 arrives: often before its stream sequence is noted
    gw, _ = own_gateway
    key = gw.create_key(user)
    with gw.client(key) as c:
        for _ in range(5):
            job = c.post("/api/v1/jobs", json={"kind": "noop"}).json()
            assert c.post(f"/api/v1/jobs/{job['job_id']}/cancel").json()["status"] == "cancelled"

    # Then none of their messages stays in the stream for a node to take later
    async def queued_messages() -> int:
        async with _trusted(gw.nats_url) as (js, _):
            infos = [await js.stream_info(names.JOBS_STREAM, subjects_filter=f) for f in names.owner_job_filters(user)]
            return sum(sum((i.state.subjects or {}).values()) for i in infos)

    deadline = time.monotonic() + 10
    while (left := await queued_messages()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert left == 0, f"{left} cancelled job(s) still queued"


async def test_a_cancel_that_beats_the_sequence_note_still_withdraws_the_message(own_gateway, user):
    # Given a submission queued with its sequence noted in the background
    gw, _ = own_gateway
    gw.create_key(user)  # the owner's topology
    rec = noop_record(user, time.time())
    async with _trusted(gw.nats_url) as (js, store):
        notes = PendingNotes()
        publisher = JobPublisher(
            js,
            RecordSeal.from_secret(ADMIN_TOKEN),
            give_up_after_s=5,
            ensure_queue=topology.QueueMaker(js, Settings()),
        )
        await queue_attempt(store, publisher, user, rec.job_id, 1, rec, notes=notes)
        # When a cancel's write reaches the record first (sent before the note task runs)
        await store.update(user, rec.job_id, lambda r: r.model_copy(update={"status": JobStatus.CANCELLED}))
        (noted,) = await asyncio.gather(*notes.tasks)
        # Then the note still records where the message was, and deletes it
        assert noted.status is JobStatus.CANCELLED and noted.stream_seq, noted
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.get_msg(names.JOBS_STREAM, noted.stream_seq)
