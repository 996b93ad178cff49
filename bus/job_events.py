"""What a node tells the world about its jobs: lifecycle, progress and text events.

One small class builds every event a node sends (subject, payload, the
per-attempt `Nats-Msg-Id`) and decides how it travels: `started` without
waiting for its PubAck, outcomes stored and retried through a failover,
progress and finished text segments as plain core publishes. The job's run and `bus/acking.settle`
call it; nothing else publishes events. `StartNotice` decides *whether* a
run's `started` is sent at all: not for a run that succeeds within
`STARTED_GRACE_S`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from bus.retry import retrying
from schemas import codec, names
from schemas.events import EventType, JobEvent, TextSegment
from schemas.jobs import ErrorInfo, JobMessage, now
from schemas.names import Lane

log = logging.getLogger("gpubus.bus.node")

# A run that succeeds within this long sends no `started`: its outcome
# carries when it began (`started_at`), and the record goes from queued to
# succeeded. A stored event, a materializer compare-and-set and a delivery
# to every watcher less per short job (a no-op, a page of OCR), where the
# `running` state would have been superseded before anyone could see it.
STARTED_GRACE_S = 0.25


class EventReporter:
    """One node's voice on `events.<owner>.<job_id>`."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, *, lane: Lane, node_id: str, bus_retry_s: float) -> None:
        self._nc = nc
        self._js = js
        self._lane = lane
        self._node_id = node_id
        self._bus_retry_s = bus_retry_s

    def _message(self, job: JobMessage, type_: EventType, **fields: Any) -> tuple[str, bytes]:
        ev = JobEvent(
            type=type_,
            job_id=job.job_id,
            owner=job.owner,
            attempt=job.attempt,
            lane=self._lane,
            node_id=self._node_id,
            at=now(),
            **fields,
        )
        return names.event_subject(job.owner, job.job_id), codec.encode(ev)

    @staticmethod
    def _dedup(job: JobMessage, type_: EventType) -> dict[str, str]:
        """A Nats-Msg-Id per (job, attempt, type): a node redoing an attempt
        after a lost ack reports it once, so every attempt has exactly one
        terminal event in the stream."""
        return {"Nats-Msg-Id": names.event_msg_id(job.job_id, job.attempt, type_)}

    async def started(self, job: JobMessage, started_at: float | None = None) -> None:
        """Sent without waiting for its PubAck: nothing depends on it being
        stored, and the wait (a disk sync on the server) was on every job's
        critical path. It still goes out before the outcome on the same
        connection, so it is stored first; a failure is logged."""
        subject, payload = self._message(job, EventType.STARTED, started_at=started_at)
        try:
            fut = await self._js.publish_async(subject, payload, headers=self._dedup(job, EventType.STARTED))
        except Exception as e:  # the outcome, stored and retried, says the rest
            log.warning("job %s: started event not sent: %r", job.job_id, e)
            return
        fut.add_done_callback(partial(_log_failed_publish, job_id=job.job_id, type_=EventType.STARTED))

    async def finished(self, job: JobMessage, type_: EventType, **fields: Any) -> None:
        """An outcome (succeeded, failed, cancelled, released), stored and
        retried through a leader election: the gateway moves the job on it."""
        subject, payload = self._message(job, type_, **fields)
        headers = self._dedup(job, type_)

        async def once() -> object:
            return await self._js.publish(subject, payload, headers=headers)

        await retrying(
            once,
            what=f"publish {type_} of {job.job_id}",
            give_up_after_s=self._bus_retry_s,
        )

    async def settled(
        self, job: JobMessage, outcome: str, error: ErrorInfo | None, *, started_at: float | None = None
    ) -> None:
        """`bus/acking.settle`'s report: a failure, cancel or release."""
        await self.finished(job, EventType(outcome), error=error, started_at=started_at)

    def progress(self, job: JobMessage, fraction: float | None, **counts: float | int | str | None) -> None:
        """Advisory: a core publish (no PubAck wait) into the stream.
        `counts`: `media_s_done`, or `pages_done` and `pages_total`; and the `phase`."""
        subject, payload = self._message(job, EventType.PROGRESS, progress=fraction, **counts)
        asyncio.ensure_future(self._nc.publish(subject, payload))

    def segment(self, job: JobMessage, segment: TextSegment) -> None:
        """A finished piece of text, as soon as it exists: a core publish
        (no PubAck wait) into the stream, like progress, but never
        throttled. Its `Nats-Msg-Id` names the attempt and the index, so a
        job redone within the duplicate window (an OOM retry, a redelivery)
        stores each piece once. A lost one costs only streamed text: the
        result holds all of it."""
        subject, payload = self._message(job, EventType.SEGMENT, segment=segment)
        headers = {"Nats-Msg-Id": names.event_msg_id(job.job_id, job.attempt, f"{EventType.SEGMENT}-{segment.index}")}
        asyncio.ensure_future(self._nc.publish(subject, payload, headers=headers))


def _log_failed_publish(fut: asyncio.Future[Any], *, job_id: str, type_: EventType) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("job %s: %s event not stored: %s", job_id, type_, fut.exception())


class StartNotice:
    """Whether and when one run's `started` goes out. Sent when the run has
    lasted `grace_s`, or at once when it shows progress or text (watchers
    then see it running, and in order), or before an outcome other than
    success (a failure, cancel or release has always followed a `started`,
    and a delivery count is read from them). A success within the grace
    sends none. Every event it sends names when the run began
    (`started_at`): a `started` sent late does not move the record's start.

    Only the event loop's thread calls it. The outcome waits for a
    `started` in flight, so it is always stored after it; a progress or
    text event goes out in task order after the `started` scheduled for it
    (but for a node's very first `started`, whose publish first subscribes
    nats-py's reply inbox: that one progress event may come before it)."""

    def __init__(
        self,
        events: EventReporter,
        job: JobMessage,
        grace_s: float = STARTED_GRACE_S,
        *,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        self._events = events
        self._job = job
        self._on_send = on_send  # the node's "started" log line: logged when, and only if, the event goes
        self.at = now()
        self._send: asyncio.Future[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(grace_s, self.now)

    def now(self) -> None:
        """Send `started` now, once."""
        if self._send is None:
            self._timer.cancel()
            if self._on_send is not None:
                self._on_send()
            self._send = asyncio.ensure_future(self._events.started(self._job, self.at))

    async def before_outcome(self, *, announce: bool) -> None:
        """Call before publishing the run's outcome: with `announce`,
        `started` goes out now if it has not; either way one already sent
        leaves the client before the outcome does."""
        if announce:
            self.now()
        self.close()
        if self._send is not None:
            await self._send

    def close(self) -> None:
        """No `started` from here on unless one was sent (the run ended)."""
        self._timer.cancel()
