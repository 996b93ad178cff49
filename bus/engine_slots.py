"""A node's engine slots, granted in the order its jobs were taken.

With prefetch (bus/node_runtime.py) several jobs fetch and prepare their
inputs at once; without an order, a short clip taken second would decode
first and overtake the long one taken before it, and the queue would stop
being first come, first served. Each job takes a ticket when it is taken;
slots go to tickets in turn, and a job that ends without wanting one (its
input was missing, it was cancelled) gives its turn up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class EngineSlots:
    def __init__(self, capacity: int) -> None:
        self._free = asyncio.Semaphore(capacity)
        self.capacity = capacity
        self.held = 0
        self._turn = asyncio.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._given_up: set[int] = set()

    def ticket(self) -> int:
        t = self._next_ticket
        self._next_ticket += 1
        return t

    @contextlib.asynccontextmanager
    async def slot(self, ticket: int) -> AsyncIterator[None]:
        """Hold a slot for the block, once every earlier ticket has had one."""
        try:
            async with self._turn:
                await self._turn.wait_for(lambda: self._serving >= ticket)
            await self._free.acquire()
        finally:
            await self.give_up(ticket)
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            self._free.release()

    async def give_up(self, ticket: int) -> None:
        """The ticket's turn is over (served, or never to be): the next one's comes."""
        async with self._turn:
            if ticket >= self._serving:
                self._given_up.add(ticket)
            while self._serving in self._given_up:
                self._given_up.discard(self._serving)
                self._serving += 1
            self._turn.notify_all()
