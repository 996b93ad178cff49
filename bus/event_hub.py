"""Node events of the jobs this gateway's SSE clients follow, without a
JetStream consumer per client.

Each `/events` client used to cost an ordered consumer on EVENTS (and a KV
watch): 500 clients, 1,000 consumers. Now a followed job's live events come
from one core subscription on its subject, shared by every client of that
job, and what happened before a client came is read with batched direct
gets (nats-server 2.11+), which make no consumer at all. Record updates come
from the gateway's one RecordWatch (bus/record_watch.py).

Subscribe first, then read the history: an event stored in between is in
both, and a follower skips the copy it already has (same bytes: every event
carries its own timestamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.direct_batch import DirectGets
from bus.errors import BusError, BusUnavailable
from schemas import names

log = logging.getLogger("gpubus.bus.event_hub")

Deliver = Callable[[bytes], None]


class EventHub:
    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._events = DirectGets(nc, names.EVENTS_STREAM)
        self._followers: dict[str, set[Deliver]] = {}
        self._subs: dict[str, Subscription] = {}
        self._lock = asyncio.Lock()

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    @contextlib.asynccontextmanager
    async def listening(self, subject: str, deliver: Deliver) -> AsyncIterator[None]:
        """`deliver(raw event)` for every event published on `subject` while
        the block runs."""
        async with self._lock:
            if subject not in self._subs:
                self._subs[subject] = await self._nc.subscribe(subject, cb=self._on_event)
            self._followers.setdefault(subject, set()).add(deliver)
        try:
            yield
        finally:
            await asyncio.shield(self._leave(subject, deliver))

    async def _leave(self, subject: str, deliver: Deliver) -> None:
        async with self._lock:
            followers = self._followers.get(subject, set())
            followers.discard(deliver)
            if followers:
                return
            self._followers.pop(subject, None)
            sub = self._subs.pop(subject, None)
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection took it already
                await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        for deliver in list(self._followers.get(msg.subject, ())):
            deliver(msg.data)

    async def history(self, subject: str) -> AsyncIterator[bytes]:
        """Every event stored on `subject` so far, oldest first. A history the
        server does not finish answering is cut short (logged): the client
        still gets every live event."""
        try:
            async for stored in self._events.read_all(subject):
                yield stored.data
        except (BusError, BusUnavailable) as e:
            log.warning("event history of %s cut short: %s", subject, e)
