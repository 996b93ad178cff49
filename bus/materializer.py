"""Folds node events (stream EVENTS) into job records (KV `jobs`).

Nodes only report; the gateway side decides what the record says. The first
terminal state wins; a terminal event for a job already terminal (a node that
woke up after its job fell back) is counted, never shown. Several gateways can
run this at once: they share one durable consumer and update records by CAS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus.event_drops import EventDrops
from bus.joblog import job_fields
from bus.jobstore import JobStore
from bus.metrics import GatewayMetrics
from bus.pulling import DurableLoop
from bus.result_store import RecentResults
from bus.retry import is_retryable
from schemas import codec, names
from schemas.errors import NotFound
from schemas.events import EventType, JobEvent, inline_digest
from schemas.jobs import JobRecord, JobStatus

log = logging.getLogger("gpubus.bus.materializer")

FETCH_BATCH = 64
RETRY_DELAY_S = 1.0
UNKNOWN_JOB = "unknown_job"
OVER_QUOTA = "over_quota"
NOT_FOLDABLE = "not_foldable"

_TERMINAL_STATUS = {
    EventType.SUCCEEDED: JobStatus.SUCCEEDED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}


def event_refusal(subject: str, ev: JobEvent) -> str | None:
    """Why a well-formed event is still not believed: a node may publish
    only under its owner, and a result may be only the object the attempt
    was told to write (not, say, the owner's cookie file)."""
    if subject != names.event_subject(ev.owner, ev.job_id):
        return "subject and body disagree"
    if ev.result_object is not None and ev.result_object != names.result_object(ev.job_id, ev.attempt):
        return f"result_object {ev.result_object[:80]!r} is not this attempt's result"
    if ev.result_inline is not None and (ev.type != EventType.SUCCEEDED or ev.result_object is not None):
        return "an inline result belongs only to a succeeded event without a result object"
    return None


def _subject_job(subject: str) -> tuple[str, str]:
    """(owner, job id) as `events.<owner>.<job_id>` names them."""
    _, owner, job_id = (subject.split(".", 2) + ["", ""])[:3]
    return owner, job_id


def _is_replay(rec: JobRecord, ev: JobEvent) -> bool:
    """The very event that made the record terminal, delivered again."""
    return rec.status == _TERMINAL_STATUS.get(ev.type) and rec.node_id == ev.node_id and rec.attempts == ev.attempt


def fold(rec: JobRecord, ev: JobEvent, seq: int | None = None) -> JobRecord | None:
    """The new record, or None when the event changes nothing. `seq` is the
    event's EVENTS sequence: an inline result is read back by it. A text
    segment never changes a record."""
    if ev.type is EventType.SEGMENT:
        return None
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
            rec.started_at = rec.started_at or ev.started_at or ev.at
        if ev.progress is not None:
            rec.progress = max(rec.progress, ev.progress) if rec.node_id == ev.node_id else ev.progress
        if ev.phase is not None:
            rec.phase = ev.phase
        return rec
    rec.status = _TERMINAL_STATUS[ev.type]
    rec.phase = None
    rec.node_id = ev.node_id
    rec.finished_at = ev.at
    rec.started_at = rec.started_at or ev.started_at or ev.at
    if ev.type == EventType.SUCCEEDED:
        rec.progress = 1.0
        rec.result_object = ev.result_object
        if ev.result_inline is not None and seq is not None:
            rec.result_event_seq, rec.result_sha256 = seq, inline_digest(ev.result_inline)
        else:
            rec.result_event_seq = rec.result_sha256 = None
        rec.summary = ev.summary
        rec.error = None
    else:
        rec.error = ev.error
    return rec


class Materializer:
    def __init__(
        self,
        js: JetStreamContext,
        jobs: JobStore,
        metrics: GatewayMetrics,
        *,
        nc: NatsClient,
        on_released: Callable[[JobEvent], Awaitable[None]],
        recent: RecentResults | None = None,
    ) -> None:
        self._js = js
        self._recent = recent  # inline results of the outcomes folded here, for this gateway's readers
        self._on_released = on_released
        self._jobs = jobs
        self._metrics = metrics
        self._drops = EventDrops()
        self._loop = DurableLoop(
            nc,
            durable=names.MATERIALIZER_CONSUMER,
            stream=names.EVENTS_STREAM,
            handle=self._handle,
            max_batch=FETCH_BATCH,
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        self._drops.flush()

    async def _handle(self, msgs: list[Msg]) -> None:
        """A batch, grouped by job: each job's events are folded into its
        record with one compare-and-set, and the jobs of a batch go side by
        side (one CAS per event, one job after another, made the
        materializer the bottleneck of the whole system under load)."""
        by_job: dict[str, list[tuple[Msg, JobEvent]]] = {}
        flooded: dict[str, list[Msg]] = {}
        text: list[Msg] = []
        for msg in msgs:  # a batch often holds a job's `started` and its outcome
            owner, job_id = _subject_job(msg.subject)
            if self._drops.flooding(owner) and not self._jobs.knows(owner, job_id):
                flooded.setdefault(owner, []).append(msg)  # not even decoded: see bus/event_drops.py
                continue
            ev = await self._decode(msg)
            if ev is None:
                continue
            if ev.type is EventType.SEGMENT:  # text for watchers: no record change, no CAS
                text.append(msg)
            else:
                by_job.setdefault(msg.subject, []).append((msg, ev))
        for owner, dropped in flooded.items():
            await self._drop(dropped, owner, OVER_QUOTA)
        await asyncio.gather(*(m.ack() for m in text), *(self._handle_job(group) for group in by_job.values()))

    async def _decode(self, msg: Msg) -> JobEvent | None:
        """The event, or None once a bad one is counted and termed."""
        try:
            ev = codec.decode(msg.data, JobEvent)
        except codec.DecodeError as e:
            self._metrics.bad_events.inc()
            log.error("dropping undecodable event on %s: %s", msg.subject, e)
            await msg.term()
            return None
        why = event_refusal(msg.subject, ev)
        if why is not None:
            self._metrics.bad_events.inc()
            log.error("event for %s.%s on %s dropped: %s", ev.owner, ev.job_id, msg.subject, why)
            await msg.term()
            return None
        return ev

    async def _handle_job(self, group: list[tuple[Msg, JobEvent]]) -> None:
        """One job's events of a batch, in stream order. A `released` event
        (rare: a job's last delivery given up) goes to the fallback router
        on its own; the events around it are folded in one CAS each run."""
        run: list[tuple[Msg, JobEvent]] = []
        for msg, ev in group:
            if ev.type == EventType.RELEASED:
                await self._settle(run, self.apply_all)
                await self._settle([(msg, ev)], lambda items: self._on_released(items[0][1]))
                run = []
            else:
                run.append((msg, ev))
        await self._settle(run, self.apply_all)

    async def _settle(
        self, items: list[tuple[Msg, JobEvent]], apply: Callable[[list[tuple[Msg, JobEvent]]], Awaitable[object]]
    ) -> None:
        """One place decides: ack what was applied; nak what may work on a
        later delivery (a record not written yet, NATS blinking); term the
        rest, so no event is redelivered for ever."""
        if not items:
            return
        msgs, events = [m for m, _ in items], [e for _, e in items]
        first = events[0]
        try:
            await apply(items)
        except NotFound:
            delay = self._drops.retry_delay(first.owner, msgs[0].metadata.num_delivered, len(msgs))
            if delay is not None:
                await asyncio.gather(*(m.nak(delay=delay) for m in msgs))
            else:
                await self._drop(msgs, first.owner, UNKNOWN_JOB)
            return
        except Exception as e:
            if is_retryable(e):
                log.warning(
                    "could not apply %d event(s) of job %s (%s); will be redelivered", len(events), first.job_id, e
                )
                await asyncio.gather(*(m.nak(delay=RETRY_DELAY_S) for m in msgs))
            else:
                log.error(
                    "%d event(s) of job %s.%s cannot be folded (%s: %s); dropped",
                    len(events),
                    first.owner,
                    first.job_id,
                    type(e).__name__,
                    str(e)[:200],
                )
                await self._drop(msgs, first.owner, NOT_FOLDABLE)
            return
        await asyncio.gather(*(m.ack() for m in msgs))

    async def _drop(self, msgs: list[Msg], owner: str, reason: str) -> None:
        self._metrics.dropped_events.labels(reason=reason).inc(len(msgs))
        self._drops.dropped(owner, reason, len(msgs))
        await asyncio.gather(*(m.term() for m in msgs))

    async def apply_all(self, items: list[tuple[Msg, JobEvent]]) -> JobRecord:
        """Events of one job, in order, in one compare-and-set."""
        before: dict[str, JobRecord] = {}

        def mutate(rec: JobRecord) -> JobRecord | None:
            before["rec"] = rec.model_copy()
            changed = False
            for msg, ev in items:
                new = fold(rec, ev, msg.metadata.sequence.stream)
                if new is not None:
                    rec, changed = new, True
            return rec if changed else None

        first = items[0][1]
        new = await self._jobs.update(first.owner, first.job_id, mutate)
        self._observe(before["rec"], new)
        self._keep_result(new, items)
        return new

    def _keep_result(self, rec: JobRecord, items: list[tuple[Msg, JobEvent]]) -> None:
        """The inline result the record now names, if one of these events holds it."""
        if self._recent is None or rec.result_event_seq is None:
            return
        for msg, ev in items:
            if msg.metadata.sequence.stream == rec.result_event_seq and ev.result_inline is not None:
                self._recent.put(rec.result_event_seq, ev.result_inline)

    def _observe(self, old: JobRecord, new: JobRecord) -> None:
        lane, kind = new.lane.value, new.kind
        if new.late_completions > old.late_completions:
            self._metrics.late_completions.labels(lane=lane).inc()
            log.info("job %s owner=%s late completion counted (now %d)", new.job_id, new.owner, new.late_completions)
        if old.status == JobStatus.QUEUED and new.status != JobStatus.QUEUED and new.started_at:
            wait_s = max(0.0, new.started_at - new.created_at)
            self._metrics.queue_wait.labels(lane=lane, kind=kind, priority=new.priority.value).observe(wait_s)
        if not old.terminal and new.terminal:
            code = new.error.code if new.error else ""
            self._metrics.jobs_finished.labels(lane=lane, kind=kind, status=new.status.value, code=code).inc()
            if new.finished_at:
                self._metrics.job_duration.labels(lane=lane, kind=kind).observe(
                    max(0.0, new.finished_at - new.created_at)
                )
        if old.status != new.status:
            log.info(
                "job %s owner=%s lane=%s node=%s %s -> %s",
                new.job_id,
                new.owner,
                lane,
                new.node_id,
                old.status.value,
                new.status.value,
                extra=job_fields(new.job_id, new.owner, lane, new.node_id, new.status.value, previous=old.status.value),
            )
