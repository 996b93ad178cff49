"""Folds node events (stream EVENTS) into job records (KV `jobs`).

Nodes only report; the gateway side decides what the record says. The first
terminal state wins; a terminal event for a job already terminal (a node that
woke up after its job fell back) is counted, never shown. Several gateways can
run this at once: they share one durable consumer and update records by CAS.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from bus.jobstore import JobStore
from bus.metrics import GatewayMetrics
from bus.pulling import next_batch
from schemas import codec, names
from schemas.errors import NotFound
from schemas.events import EventType, JobEvent
from schemas.jobs import JobRecord, JobStatus

log = logging.getLogger("gpubus.bus.materializer")

FETCH_BATCH = 64
FETCH_WAIT_S = 5.0

_TERMINAL_STATUS = {
    EventType.SUCCEEDED: JobStatus.SUCCEEDED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


def _is_replay(rec: JobRecord, ev: JobEvent) -> bool:
    """The very event that made the record terminal, delivered again."""
    return rec.status == _TERMINAL_STATUS.get(ev.type) and rec.node_id == ev.node_id and rec.attempts == ev.attempt


def fold(rec: JobRecord, ev: JobEvent) -> JobRecord | None:
    """The new record, or None when the event changes nothing."""
    if rec.terminal:
        if ev.type in (EventType.SUCCEEDED, EventType.FAILED) and not _is_replay(rec, ev):
            rec.late_completions += 1
            return rec
        return None
    if ev.attempt < rec.attempts and not ev.terminal:
        return None  # news from an attempt that was given up on
    if ev.type in (EventType.STARTED, EventType.PROGRESS):
        if rec.status == JobStatus.QUEUED or rec.node_id != ev.node_id:
            rec.status = JobStatus.RUNNING
            rec.node_id = ev.node_id
            rec.started_at = rec.started_at or ev.at
        if ev.progress is not None:
            rec.progress = max(rec.progress, ev.progress) if rec.node_id == ev.node_id else ev.progress
        return rec
    rec.status = _TERMINAL_STATUS[ev.type]
    rec.node_id = ev.node_id
    rec.finished_at = ev.at
    rec.started_at = rec.started_at or ev.at
    if ev.type == EventType.SUCCEEDED:
        rec.progress = 1.0
        rec.result_object = ev.result_object
        rec.summary = ev.summary
        rec.error = None
    else:
        rec.error = ev.error
    return rec


class Materializer:
    def __init__(self, js: JetStreamContext, jobs: JobStore, metrics: GatewayMetrics) -> None:
        self._js = js
        self._jobs = jobs
        self._metrics = metrics
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sub = await self._js.pull_subscribe_bind(durable=names.MATERIALIZER_CONSUMER, stream=names.EVENTS_STREAM)
        self._task = asyncio.create_task(self._run(sub), name="materializer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, sub) -> None:
        while True:
            try:
                msgs = await next_batch(sub, max_batch=FETCH_BATCH, wait_s=FETCH_WAIT_S)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection trouble: JetStream keeps the events
                log.warning("materializer fetch failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            by_job: dict[str, list] = {}
            for msg in msgs:  # a batch often holds a job's `started` and its outcome
                by_job.setdefault(msg.subject, []).append(msg)
            for err in await asyncio.gather(*(self._handle(g) for g in by_job.values()), return_exceptions=True):
                if isinstance(err, Exception):  # unacked events come back after ack_wait
                    log.warning("materializer could not settle events: %s", err)

    async def _handle(self, msgs: list) -> None:
        """One job's events from one batch, in stream order: folded into its
        record with one compare-and-set, and jobs of a batch side by side
        (one CAS per event, one job after another, made the materializer
        the bottleneck of the whole system under load)."""
        events: list[JobEvent] = []
        good = []
        for msg in msgs:
            ev = await self._decode(msg)
            if ev is not None:
                events.append(ev)
                good.append(msg)
        if not events:
            return
        try:
            await self.apply_all(events)
        except NotFound:
            log.warning("%d event(s) for unknown job %s.%s; dropped", len(events), events[0].owner, events[0].job_id)
        except Exception as e:
            log.warning("could not apply events for job %s (%s); will be redelivered", events[0].job_id, e)
            for msg in good:
                await msg.nak(delay=1.0)
            return
        for msg in good:
            await msg.ack()

    async def _decode(self, msg) -> JobEvent | None:
        """The event, or None once a bad one is counted and termed."""
        try:
            ev = codec.decode(msg.data, JobEvent)
        except codec.DecodeError as e:
            self._metrics.bad_events.inc()
            log.error("dropping undecodable event on %s: %s", msg.subject, e)
            await msg.term()
            return None
        if msg.subject != names.event_subject(ev.owner, ev.job_id):
            self._metrics.bad_events.inc()
            log.error("event for %s.%s arrived on %s; dropped", ev.owner, ev.job_id, msg.subject)
            await msg.term()
            return None
        return ev

    async def apply(self, ev: JobEvent) -> JobRecord:
        return await self.apply_all([ev])

    async def apply_all(self, events: list[JobEvent]) -> JobRecord:
        """Events of one job, in order, in one compare-and-set."""
        before: dict[str, JobRecord] = {}

        def mutate(rec: JobRecord) -> JobRecord | None:
            before["rec"] = rec.model_copy()
            changed = False
            for ev in events:
                new = fold(rec, ev)
                if new is not None:
                    rec, changed = new, True
            return rec if changed else None

        first = events[0]
        new = await self._jobs.update(first.owner, first.job_id, mutate)
        self._observe(before["rec"], new)
        return new

    def _observe(self, old: JobRecord, new: JobRecord) -> None:
        lane, kind = new.lane.value, new.kind.value
        if new.late_completions > old.late_completions:
            self._metrics.late_completions.labels(lane=lane).inc()
            log.info("job %s owner=%s late completion counted (now %d)", new.job_id, new.owner, new.late_completions)
        if old.status == JobStatus.QUEUED and new.status != JobStatus.QUEUED and new.started_at:
            self._metrics.queue_wait.labels(lane=lane, kind=kind).observe(max(0.0, new.started_at - new.created_at))
        if not old.terminal and new.terminal:
            code = new.error.code if new.error else ""
            self._metrics.jobs_finished.labels(lane=lane, kind=kind, status=new.status.value, code=code).inc()
            if new.finished_at:
                self._metrics.job_duration.labels(lane=lane, kind=kind).observe(max(0.0, new.finished_at - new.created_at))
        if old.status != new.status:
            log.info(
                "job %s owner=%s lane=%s node=%s %s -> %s",
                new.job_id, new.owner, lane, new.node_id, old.status.value, new.status.value,
            )
