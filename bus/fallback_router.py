"""Sends jobs that ran out of GPU deliveries to the CPU lane.

When a GPU node does not ack in time (it died, hung, or vanished) and the
consumer's max_deliver is reached, JetStream publishes a MAX_DELIVERIES
advisory; the DEADLETTER stream keeps it, so a fallback survives a gateway
restart. This router (one durable consumer, shared by every gateway) reads
the original job by stream sequence, republishes it on the CPU lane as the
next attempt, and deletes the original. From a CPU consumer, the same
advisory means no node could finish the job: it fails `NO_NODE_COMPLETED`.

Every step is idempotent, so a router that crashes half way is simply
redelivered the advisory: the record update is a CAS that only bumps the
attempt once, the republish has a `Nats-Msg-Id` per attempt, and deleting an
already deleted message is not an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from bus import sealing
from bus.joblog import job_fields
from bus.jobstore import JobStore
from bus.metrics import GatewayMetrics
from bus.publisher import JobPublisher
from bus.pulling import DurableLoop
from bus.queueing import queue_attempt
from bus.retry import is_retryable
from bus.sealing import RecordSeal, SealBroken
from schemas import codec, names
from schemas.errors import NO_NODE_COMPLETED, NotFound
from schemas.events import JobEvent
from schemas.jobs import ErrorInfo, Fallback, JobMessage, JobRecord, JobStatus, now
from schemas.names import Lane

log = logging.getLogger("gpubus.bus.fallback")

ACK_TIMEOUT = "ack_timeout"
NODE_RELEASED = "node_released"


def fall_back(rec: JobRecord, job: JobMessage, cpu_queue: str, reason: str = ACK_TIMEOUT) -> JobRecord | None:
    """Record update for a GPU attempt that ended unfinished (None: nothing to do)."""
    if rec.terminal or rec.attempts != job.attempt or rec.lane is not Lane.GPU:
        return None
    rec.attempts += 1
    rec.lane = Lane.CPU
    rec.queue_owner = cpu_queue
    rec.status = JobStatus.QUEUED
    rec.node_id = None
    rec.progress, rec.phase = 0.0, None  # the CPU attempt starts over
    rec.fallback = Fallback(from_lane=Lane.GPU, reason=reason, at=now())
    rec.stream_seq = None  # the CPU attempt's message is not published yet (bus/queueing.py)
    return rec


def give_up(rec: JobRecord, job: JobMessage, deliveries: int) -> JobRecord | None:
    if rec.terminal or rec.attempts != job.attempt:
        return None
    rec.status = JobStatus.FAILED
    rec.finished_at = now()
    rec.error = ErrorInfo(code=NO_NODE_COMPLETED, message=f"no node completed the job in {deliveries} deliveries")
    return rec


class FallbackRouter:
    def __init__(
        self,
        js: JetStreamContext,
        jobs: JobStore,
        publisher: JobPublisher,
        metrics: GatewayMetrics,
        seal: RecordSeal,
        *,
        nc: NatsClient,
        cpu_queue_for: Callable[[JobMessage], str],
    ) -> None:
        self._js = js
        self._seal = seal
        self._jobs = jobs
        self._publisher = publisher
        self._metrics = metrics
        self._cpu_queue_for = cpu_queue_for
        self._loop = DurableLoop(
            nc, durable=names.FALLBACK_CONSUMER, stream=names.DEADLETTER_STREAM, handle=self._handle_batch, max_batch=16
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        for msg in msgs:  # rare and each one several round trips: one at a time
            await self._handle_msg(msg)

    async def _handle_msg(self, msg: Msg) -> None:
        try:
            await self.handle(json.loads(msg.data))
            await msg.ack()
        except (ValueError, KeyError) as e:
            log.error("unreadable advisory, dropped: %s", e)
            await msg.term()
        except Exception as e:
            if not is_retryable(e):  # it would fail the same way on every delivery
                log.error("fallback of advisory failed for good (%s: %s); dropped", type(e).__name__, e)
                await msg.term()
                return
            log.warning("fallback of advisory failed (%s); will retry", e)
            await msg.nak(delay=1.0)

    async def handle(self, advisory: dict[str, Any]) -> None:
        queue = names.parse_consumer_name(str(advisory["consumer"]))
        seq = int(advisory["stream_seq"])
        if queue is None:
            log.error("advisory for %r is not about a lane consumer; dropped", advisory["consumer"])
            return
        try:
            raw = await self._js.get_msg(names.JOBS_STREAM, seq)
        except NotFoundError:
            return  # acked at the last moment, or already handled by another router
        job = await self._job_named_by(raw, queue, seq)
        if job is None:
            return
        if queue.lane is Lane.GPU:
            await self.to_cpu(job, seq)
        else:
            await self._fail(job, seq, int(advisory.get("deliveries", 0)))

    async def _job_named_by(self, raw: RawStreamMsg, queue: names.LaneQueue, seq: int) -> JobMessage | None:
        """The job an advisory is about, only if everything agrees: the message
        at that sequence is on the advisory's consumer's subjects, sealed by a
        gateway, and its record says it is that attempt at that sequence. An
        advisory is data anyone who reached the DEADLETTER subject could have
        written, and stream sequences are small consecutive numbers."""
        subject, lane = raw.subject or "", queue.lane
        if names.queue_of_subject(subject) != queue:
            log.error("advisory seq %d names a message on %s, not one of %s; dropped", seq, raw.subject, queue.consumer)
            return None
        try:
            self._seal.check(subject, raw.data or b"", (raw.headers or {}).get(sealing.HEADER))
            job = codec.decode(raw.data or b"", JobMessage)
        except (SealBroken, codec.DecodeError) as e:
            log.error("job message at seq %d refused (%s); deleted", seq, e)
            await self._delete(seq)  # garbage the node already termed
            return None
        try:
            rec, _ = await self._jobs.get(job.owner, job.job_id)
        except NotFound:
            await self._delete(seq)
            return None
        # A later attempt on record is this router's own unfinished work
        # (crashed between the record update and the republish): go on.
        current = rec.attempts == job.attempt
        if rec.attempts < job.attempt or (current and (rec.lane is not lane or rec.stream_seq not in (None, seq))):
            log.warning(
                "advisory seq %d: record of %s is attempt %d on %s at seq %s; nothing to do",
                seq,
                job.job_id,
                rec.attempts,
                rec.lane,
                rec.stream_seq,
            )
            return None
        return job

    async def released(self, ev: JobEvent) -> None:
        """A GPU node gave back its job on the last delivery: fall back now."""
        rec, _ = await self._jobs.get(ev.owner, ev.job_id)
        if rec.terminal or rec.lane is not Lane.GPU or rec.attempts != ev.attempt or rec.stream_seq is None:
            return
        log.info(
            "job %s owner=%s released by %s (%s)", ev.job_id, ev.owner, ev.node_id, ev.error.code if ev.error else ""
        )
        await self.to_cpu(rec.to_message(), rec.stream_seq, reason=NODE_RELEASED)

    async def to_cpu(self, job: JobMessage, seq: int, *, reason: str = ACK_TIMEOUT) -> None:
        """Queue the next attempt on the CPU lane, then delete the GPU one. A
        publish that fails puts the record back (bus/queueing.py) and leaves
        the original in place, so the advisory's redelivery starts over."""
        cpu_queue = self._cpu_queue_for(job)
        try:
            rec = await queue_attempt(
                self._jobs,
                self._publisher,
                job.owner,
                job.job_id,
                job.attempt + 1,
                lambda r: fall_back(r, job, cpu_queue, reason),
            )
        except NotFound:
            await self._delete(seq)
            return
        if rec is not None:
            self._metrics.fell_back(reason, job.kind)
            log.info(
                "job %s owner=%s fell back gpu -> cpu (%s, %s), attempt %d",
                job.job_id,
                job.owner,
                reason,
                rec.queue_owner,
                rec.attempts,
                extra=job_fields(job.job_id, job.owner, Lane.CPU, None, "queued"),
            )
        await self._delete(seq)

    async def _fail(self, job: JobMessage, seq: int, deliveries: int) -> None:
        was_terminal = True

        def mutate(r: JobRecord) -> JobRecord | None:
            nonlocal was_terminal  # as of the revision the CAS wins on, not a separate read
            was_terminal = r.terminal
            return give_up(r, job, deliveries)

        try:
            rec = await self._jobs.update(job.owner, job.job_id, mutate)
        except NotFound:
            await self._delete(seq)
            return
        if not was_terminal and rec.terminal:
            self._metrics.jobs_finished.labels(
                lane=rec.lane.value, kind=rec.kind, status=rec.status.value, code=NO_NODE_COMPLETED
            ).inc()
            log.warning(
                "job %s owner=%s failed: %s after %d deliveries",
                job.job_id,
                job.owner,
                NO_NODE_COMPLETED,
                deliveries,
                extra=job_fields(job.job_id, job.owner, job.lane, None, "failed", code=NO_NODE_COMPLETED),
            )
        await self._delete(seq)

    async def _delete(self, seq: int) -> None:
        try:
            await self._js.delete_msg(names.JOBS_STREAM, seq)
        except NotFoundError:
            pass
