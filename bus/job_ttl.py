"""Time to live: a job not finished within `options.ttl_s` ends `expired`,
and a node running it is told to stop (the cancel path).

The deadline lives in JetStream, as a timer message: when a job with a TTL
is queued, the gateway publishes `timers.ttl.<owner>.<job_id>` (stream
`TIMERS`, work queue) carrying the deadline. The trusted side's durable
consumer `job_ttl` takes it and, until the deadline, naks it with a delay
of the time left (capped, so a clock step costs at most one cap): the
server keeps the redelivery schedule, so any gateway, restarted or not,
gets the timer back when it is due. Only jobs with a TTL cost a message;
nodes have no access to `timers.>`.

When due: the record turns `expired` by compare-and-set only if it is not
terminal and its `expires_at` is this timer's deadline (a retry set a new
one and armed a new timer), the queued message is deleted (a node that
pulls it anyway is stopped by the cancel), and the cancel goes out on
`ctl.<owner>.cancel`. A node's later `cancelled` or late outcome changes
nothing: the first terminal state wins.
"""

from __future__ import annotations

import contextlib
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from bus.jobstore import JobStore
from bus.metrics import GatewayMetrics
from bus.publisher import ATTEMPT_TIMEOUT_S
from bus.pulling import DurableLoop
from bus.retry import is_retryable, retrying
from schemas import codec, names
from schemas.errors import NotFound
from schemas.jobs import ErrorInfo, JobId, JobRecord, JobStatus, now

log = logging.getLogger("gpubus.bus.job_ttl")

EXPIRED = "EXPIRED"
MAX_NAK_DELAY_S = 300.0
DUE_SLACK_S = 0.05  # a timer redelivered a hair early is due


class TtlTimer(BaseModel):
    owner: str
    job_id: JobId
    expires_at: float


def expires_at(ttl_s: float | None, queued_at: float) -> float | None:
    return queued_at + ttl_s if ttl_s else None


async def arm(js: JetStreamContext, rec: JobRecord, *, give_up_after_s: float) -> None:
    """The timer of a record with `expires_at`; published before the job
    is queued, so a job is never queued without its timer (a timer for a
    job that never got queued finds no record and is dropped)."""
    if rec.expires_at is None:
        return
    timer = TtlTimer(owner=rec.owner, job_id=rec.job_id, expires_at=rec.expires_at)
    subject, payload = names.ttl_timer_subject(rec.owner, rec.job_id), codec.encode(timer)
    headers = {"Nats-Msg-Id": f"{rec.job_id}.ttl.{rec.attempts}"}  # a retried publish is one timer

    async def once() -> object:
        return await js.publish(subject, payload, timeout=ATTEMPT_TIMEOUT_S, headers=headers)

    await retrying(once, what=f"arm the TTL of {rec.job_id}", give_up_after_s=give_up_after_s)


def expire(rec: JobRecord, deadline: float) -> JobRecord | None:
    """Record update when a timer is due (None: finished, or not this timer's deadline)."""
    if rec.terminal or rec.expires_at is None or abs(rec.expires_at - deadline) > 1e-3:
        return None
    rec.status = JobStatus.EXPIRED
    rec.finished_at = now()
    ttl = rec.options.ttl_s or 0.0
    rec.error = ErrorInfo(code=EXPIRED, message=f"not finished within its ttl of {ttl:g} s")
    return rec


class JobTtl:
    def __init__(self, js: JetStreamContext, jobs: JobStore, metrics: GatewayMetrics, *, nc: NatsClient) -> None:
        self._js = js
        self._nc = nc
        self._jobs = jobs
        self._metrics = metrics
        self._loop = DurableLoop(
            nc, durable=names.TTL_CONSUMER, stream=names.TIMERS_STREAM, handle=self._handle, max_batch=64
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _handle(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            await self._handle_msg(msg)

    async def _handle_msg(self, msg: Msg) -> None:
        try:
            timer = codec.decode(msg.data, TtlTimer)
        except codec.DecodeError as e:
            log.error("undecodable TTL timer on %s dropped: %s", msg.subject, e)
            await msg.term()
            return
        left = timer.expires_at - time.time()
        if left > DUE_SLACK_S:
            await msg.nak(delay=min(left, MAX_NAK_DELAY_S))
            return
        try:
            await self.fire(timer)
        except Exception as e:
            if is_retryable(e):
                log.warning("TTL of job %s not applied (%s); will retry", timer.job_id, e)
                await msg.nak(delay=1.0)
                return
            log.error("TTL of job %s failed for good (%s: %s); dropped", timer.job_id, type(e).__name__, e)
            await msg.term()
            return
        await msg.ack()

    async def fire(self, timer: TtlTimer) -> None:
        was_terminal = True

        def mutate(r: JobRecord) -> JobRecord | None:
            nonlocal was_terminal  # as of the revision the CAS wins on
            was_terminal = r.terminal
            return expire(r, timer.expires_at)

        try:
            rec = await self._jobs.update(timer.owner, timer.job_id, mutate)
        except NotFound:
            return  # never queued, or gone
        if was_terminal or rec.status is not JobStatus.EXPIRED:
            return
        if rec.stream_seq is not None:
            with contextlib.suppress(NotFoundError):  # a node has it, or it is done: the cancel stops it
                await self._js.delete_msg(names.JOBS_STREAM, rec.stream_seq)
        await self._nc.publish(names.cancel_subject(rec.owner), rec.job_id.encode())
        lane, kind = rec.lane.value, rec.kind
        self._metrics.jobs_expired.labels(lane=lane, kind=kind).inc()
        self._metrics.jobs_finished.labels(lane=lane, kind=kind, status=rec.status.value, code=EXPIRED).inc()
        log.info("job %s owner=%s expired (ttl %s s) on %s", rec.job_id, rec.owner, rec.options.ttl_s, lane)
