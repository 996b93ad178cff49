"""One job's live feed: its record, then its node events as they happen.

For `GET /api/v1/jobs/{id}/events` (Server-Sent Events). Two sources are
merged: the node events (bus/event_hub.py: what is stored so far, so a
client that connects late still sees `started` and every progress event,
then each new one), and the job record (bus/record_watch.py), which is where
states that no node reports appear (a fallback, a cancel, NO_NODE_COMPLETED).
Neither costs a JetStream consumer per client. The feed ends with the
record's terminal state: when a client sees it, the result is already
readable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from bus.event_hub import EventHub
from bus.jobstore import JobStore
from bus.record_watch import RecordWatch
from schemas import codec, names
from schemas.events import JobEvent
from schemas.jobs import JobRecord

log = logging.getLogger("gpubus.bus.job_feed")

PING_S = 15.0
SETTLE_S = 0.25  # after the terminal record, events still in flight get this long


@dataclass(frozen=True)
class FeedItem:
    """`state` (a record), `event` (a node event) or `ping` (nothing new)."""

    kind: str
    record: JobRecord | None = None
    event: JobEvent | None = None
    raw: bytes = b""


@dataclass(frozen=True)
class Sources:
    """What every feed of one gateway shares."""

    hub: EventHub
    records: RecordWatch
    jobs: JobStore


def _event(raw: bytes) -> FeedItem | None:
    try:
        return FeedItem("event", event=codec.decode(raw, JobEvent), raw=raw)
    except codec.DecodeError as e:
        log.warning("skipping an undecodable event: %s", e)
        return None


async def follow(src: Sources, first: JobRecord, *, ping_s: float = PING_S) -> AsyncGenerator[FeedItem, None]:
    """`first` is the record the caller already read (and authorised)."""
    yield FeedItem("state", record=first)
    if first.terminal:
        return
    queue: asyncio.Queue[FeedItem] = asyncio.Queue()
    subject = names.event_subject(first.owner, first.job_id)
    async with src.hub.listening(subject, lambda raw: queue.put_nowait(FeedItem("event", raw=raw))):
        with src.records.following(
            names.job_key(first.owner, first.job_id), lambda rec: queue.put_nowait(FeedItem("state", record=rec))
        ):
            seen: set[bytes] = set()
            async for raw in src.hub.history(subject):
                seen.add(raw)
                if (item := _event(raw)) is not None:
                    yield item
            # A revision written between the caller's read and `following`.
            queue.put_nowait(FeedItem("state", record=(await src.jobs.get(first.owner, first.job_id))[0]))
            async for item in _live(queue, first, seen, ping_s):
                yield item


async def _live(
    queue: asyncio.Queue[FeedItem], first: JobRecord, seen: set[bytes], ping_s: float
) -> AsyncGenerator[FeedItem, None]:
    last = first
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), ping_s)
        except TimeoutError:
            yield FeedItem("ping")
            continue
        if item.kind == "event":
            if item.raw in seen:  # stored before the history read, delivered live too
                seen.discard(item.raw)
            elif (decoded := _event(item.raw)) is not None:
                yield decoded
            continue
        rec = item.record
        assert rec is not None
        if rec.updated_at <= last.updated_at:
            continue  # a revision already sent
        last = rec
        if rec.terminal:
            await asyncio.sleep(SETTLE_S)
            while not queue.empty():
                pending = queue.get_nowait()
                if pending.kind == "event" and pending.raw not in seen and (decoded := _event(pending.raw)):
                    yield decoded
            yield FeedItem("state", record=rec)
            return
        yield item
