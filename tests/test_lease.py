"""The node's lease on a job: extended while the work shows progress, not
when the worker is hung. The runtime runs in-process against a real
nats-server with processors that really block or really progress."""

from __future__ import annotations

import asyncio
import threading
import time

import nats
import pytest
from prometheus_client import CollectorRegistry

from bus import topology
from bus.metrics import NodeMetrics
from bus.node_runtime import NodeRuntime
from bus.publisher import JobPublisher
from bus.sealing import RecordSeal
from bus.settings import Settings
from processors.noop import NoopResult
from schemas import names
from schemas.jobs import JobMessage, ResultSummary, new_job_id
from schemas.names import Kind, Lane
from schemas.processing import NOTHING_STAGED, JobOutput, Staging
from tests.harness import ADMIN_TOKEN

pytestmark = pytest.mark.timeout(60)
ACK_WAIT_S = 1.5


class _Processor:
    device = "cpu"
    kinds = frozenset({"audio"})
    models: list[str] = []

    def __init__(self, work) -> None:
        self._work = work

    def staging(self, job) -> Staging:
        return NOTHING_STAGED

    def run(self, job, input_path, work_dir, progress, cancelled) -> JobOutput:
        self._work(progress, cancelled)
        return JobOutput(result=NoopResult(job_id=job.job_id), summary=ResultSummary(duration_s=1.0))


async def _run_one(nats_url: str, processor, *, job_deadline_s: float, watch_s: float) -> tuple[int, int, int]:
    """Returns (advisories captured, redeliveries, stream messages left)."""
    s = Settings(nats_url=nats_url, gpu_ack_wait=ACK_WAIT_S)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await topology.ensure_core(js, s)
    await topology.ensure_owner(js, s, "alice")
    node_nc = await nats.connect(nats_url)
    runtime = NodeRuntime(
        node_nc,
        processor,
        queue_owner="alice",
        lane=Lane.GPU,
        capacity=1,
        job_deadline_s=job_deadline_s,
        metrics=NodeMetrics(CollectorRegistry(), node_id="n1", device="cpu"),
        node_id="n1",
        handle_signals=False,
    )
    await runtime.start()
    try:
        job = JobMessage(
            job_id=new_job_id(),
            owner="alice",
            queue_owner="alice",
            lane=Lane.GPU,
            kind=Kind.AUDIO,
            attempt=1,
            submitted_at=time.time(),
        )
        publisher = JobPublisher(
            js, RecordSeal.from_secret(ADMIN_TOKEN), give_up_after_s=5, ensure_queue=topology.QueueMaker(js, s)
        )
        await publisher.publish(job)
        await asyncio.sleep(watch_s)
        dead = await js.stream_info(names.DEADLETTER_STREAM)
        cons = await js.consumer_info(names.JOBS_STREAM, names.consumer_name("alice", Lane.GPU))
        jobs = await js.stream_info(names.JOBS_STREAM)
        return dead.state.messages, cons.num_redelivered, jobs.state.messages
    finally:
        await runtime.stop(0)
        await node_nc.close()
        await nc.close()


async def test_long_job_with_progress_is_never_redelivered(fresh_nats):
    def steady(progress, cancelled):  # 5 s of work, 3+ ack_waits, reporting as it goes
        for i in range(10):
            progress(float(i), 10.0)
            time.sleep(0.5)

    dead, redelivered, left = await _run_one(fresh_nats.url, _Processor(steady), job_deadline_s=10, watch_s=7)
    assert (dead, redelivered, left) == (0, 0, 0)  # done and acked, never timed out


async def test_hung_worker_lets_the_lease_expire(fresh_nats):
    gate = threading.Event()

    def hung(progress, cancelled):  # starts, then never reports again
        progress(0.0, 10.0)
        gate.wait(30)

    try:
        dead, redelivered, left = await _run_one(fresh_nats.url, _Processor(hung), job_deadline_s=1.0, watch_s=5)
    finally:
        gate.set()
    # the node stopped extending: the advisory that triggers fallback was captured
    assert dead == 1 and left == 1
