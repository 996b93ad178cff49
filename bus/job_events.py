"""What a node tells the world about its jobs: lifecycle, progress and text events.

One small class builds every event a node sends (subject, payload, the
per-attempt `Nats-Msg-Id`) and decides how it travels: `started` without
waiting for its PubAck, outcomes stored and retried through a failover,
progress and finished text segments as plain core publishes. The job's run and `bus/acking.settle`
call it; nothing else publishes events.
"""

from __future__ import annotations

import asyncio
import logging
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

    async def started(self, job: JobMessage) -> None:
        """Sent without waiting for its PubAck: nothing depends on it being
        stored, and the wait (a disk sync on the server) was on every job's
        critical path. It still goes out before the outcome on the same
        connection, so it is stored first; a failure is logged."""
        subject, payload = self._message(job, EventType.STARTED)
        fut = await self._js.publish_async(subject, payload, headers=self._dedup(job, EventType.STARTED))
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

    async def settled(self, job: JobMessage, outcome: str, error: ErrorInfo | None) -> None:
        """`bus/acking.settle`'s report: a failure, cancel or release."""
        await self.finished(job, EventType(outcome), error=error)

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
