"""An answer a few seconds old, shared by every caller that asks meanwhile.

The web page asks `queue-info` every 4 s for each open tab, and its recent
failures read up to 500 of the owner's records each time: 19.5 ms of the
gateway's CPU a request at 30,000 records (14.5 ms at 300), five times the
page's job listing, so some 200 open pages took a core. Failures a few
seconds old serve that panel as well, and the tabs of one owner (and
requests that overlap) share one read.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentAnswers(Generic[K, V]):
    """Per key, the answer `compute` gave at most `ttl_s` ago, or the one
    being computed now; at most `max_entries` keys, least recently asked
    going first. A failed computation is not kept: the next caller tries."""

    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._answers: OrderedDict[K, tuple[float, asyncio.Future[V]]] = OrderedDict()

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        known = self._answers.get(key)
        if known is not None and self._clock() < known[0]:
            self._answers.move_to_end(key)
            return await asyncio.shield(known[1])  # a caller that goes away leaves the read to the others
        answer: asyncio.Future[V] = asyncio.ensure_future(compute())
        self._answers[key] = (self._clock() + self._ttl_s, answer)
        self._answers.move_to_end(key)
        while len(self._answers) > self._max_entries:
            self._answers.popitem(last=False)
        answer.add_done_callback(lambda done: self._forget_failed(key, done))
        return await asyncio.shield(answer)

    def _forget_failed(self, key: K, done: asyncio.Future[V]) -> None:
        known = self._answers.get(key)
        if known is not None and known[1] is done and (done.cancelled() or done.exception() is not None):
            del self._answers[key]
