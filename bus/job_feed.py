"""One job's live feed: its record, then its node events as they happen.

For `GET /api/v1/jobs/{id}/events` (Server-Sent Events). Two sources are
merged: the node events in stream EVENTS (an ordered consumer from the first
one, so a client that connects late still sees `started` and every progress
event), and the job record in KV `jobs` (a watch), which is where states that
no node reports appear (a fallback, a cancel, NO_NODE_COMPLETED). The feed
ends with the record's terminal state: when a client sees it, the result is
already readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import partial

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from bus import ephemeral
from bus.jobstore import JobStore
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


async def follow(
    js: JetStreamContext, jobs: JobStore, first: JobRecord, *, ping_s: float = PING_S
) -> AsyncGenerator[FeedItem, None]:
    """`first` is the record the caller already read (and authorised)."""
    yield FeedItem("state", record=first)
    if first.terminal:
        return
    queue: asyncio.Queue[FeedItem] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        try:
            queue.put_nowait(FeedItem("event", event=codec.decode(msg.data, JobEvent)))
        except codec.DecodeError as e:
            log.warning("skipping undecodable event on %s: %s", msg.subject, e)

    async def watch_record() -> None:
        async with contextlib.aclosing(jobs.watch(first.owner, first.job_id)) as records:
            async for rec in records:
                queue.put_nowait(FeedItem("state", record=rec))

    sub = await ephemeral.created(
        js.subscribe(
            names.event_subject(first.owner, first.job_id),
            stream=names.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=on_event,
            inactive_threshold=ephemeral.INACTIVE_THRESHOLD_S,
        ),
        partial(ephemeral.drop, js),
    )
    watcher = asyncio.create_task(watch_record(), name=f"feed-{first.job_id}")
    last = first
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), ping_s)
            except TimeoutError:
                yield FeedItem("ping")
                continue
            if item.kind == "event":
                yield item
                continue
            rec = item.record
            assert rec is not None
            if rec.updated_at <= last.updated_at:
                continue  # the watch starts with the record we already sent
            last = rec
            if rec.terminal:
                await asyncio.sleep(SETTLE_S)
                while not queue.empty():
                    pending = queue.get_nowait()
                    if pending.kind == "event":
                        yield pending
                yield FeedItem("state", record=rec)
                return
            yield item
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        await ephemeral.drop(js, sub)
