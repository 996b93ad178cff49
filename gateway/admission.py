"""The per-owner limit on unfinished jobs, admitted one at a time per owner.

Counting the owner's messages in the JOBS stream and then admitting was a
race: every submission awaits the count, stages its upload and publishes
before its job is in that count, so 20 parallel submissions against a limit
of 5 all saw the old count and were all admitted. Here the count and the
decision happen under a per-owner lock, and an admitted job holds a
reservation, counted with the stream, until it is published or has failed.
(Between its publish and its release it counts twice: briefly strict, never
lenient.) Across several gateways, each only knows its own reservations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from schemas.errors import RateLimited

ACTIVE_CACHE_S = 1.0
RETRY_AFTER_S = 5


class Admission:
    """`count(owner)` is the owner's jobs in the stream (queued + running)."""

    def __init__(self, count: Callable[[str], Awaitable[int]]) -> None:
        self._count = count
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, int] = {}
        self._cached: dict[str, tuple[float, int]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, owner: str, limit: int) -> AsyncIterator[None]:
        """Hold one of the owner's `limit` slots while the job is staged and
        published; RateLimited (429) when none is free."""
        await self._reserve(owner, limit)
        try:
            yield
        finally:
            self._pending[owner] -= 1

    async def _reserve(self, owner: str, limit: int) -> None:
        async with self._locks.setdefault(owner, asyncio.Lock()):
            active = self._recent(owner, limit)
            if active is None:
                # Reservations read before the count: one released while the
                # count is out was published first, so it is in the count or
                # in this number, never in neither (read after, it was neither).
                reserved = self._pending.get(owner, 0)
                active = await self._count(owner) + reserved
                self._cached[owner] = (time.monotonic(), active)
            if active >= limit:
                raise RateLimited(f"{active} jobs queued or running; the limit is {limit}", retry_after_s=RETRY_AFTER_S)
            self._cached[owner] = (self._cached[owner][0], active + 1)
            self._pending[owner] = self._pending.get(owner, 0) + 1

    def _recent(self, owner: str, limit: int) -> int | None:
        """A count well under the limit is reused for ACTIVE_CACHE_S, plus
        the jobs admitted since: a burst of submissions costs one count, not
        two stream_info requests each (each one a scan of the owner's
        subjects on the server). Near the limit the count is always fresh,
        so a job is refused only on a current count."""
        cached = self._cached.get(owner)
        if cached and time.monotonic() - cached[0] < ACTIVE_CACHE_S and cached[1] + 1 < limit:
            return cached[1]
        return None


class StreamCap:
    """At most `limit` concurrent requests of one sort per owner, for the
    sorts that hold JetStream consumers while they run: an event stream
    (SSE) holds two for as long as it is open, a job listing one KV watch
    while it reads. Without a cap one key held hundreds. `what` names them
    in the 429."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        self._open: dict[str, int] = {}

    def take(self, owner: str) -> Callable[[], None]:
        """A slot for one request (RateLimited when all are taken) and the
        function that gives it back; calling that twice gives back once."""
        if self._open.get(owner, 0) >= self.limit:
            raise RateLimited(
                f"{self.limit} {self.what} already running; wait for one to finish", retry_after_s=RETRY_AFTER_S
            )
        self._open[owner] = self._open.get(owner, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[owner] -= 1

        return release
