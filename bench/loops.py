"""The two ways every round-trip benchmark drives a system: one job at a
time (latency) and a fixed number in flight (throughput), so gpubus, raw
nats-py and Celery are driven by exactly the same loop."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

OneJob = Callable[[int], Awaitable[None]]


async def sequential(one: OneJob, n: int, *, warmup: int) -> list[float]:
    """Latency of each of `n` jobs run back to back (after `warmup`)."""
    for i in range(warmup):
        await one(-1 - i)
    out: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        await one(i)
        out.append(time.perf_counter() - t0)
    return out


async def pipelined(one: OneJob, n: int, *, inflight: int) -> tuple[float, list[float]]:
    """Jobs per second for `n` jobs with `inflight` always outstanding, and
    each job's latency under that load."""
    counter = itertools.count()
    lat: list[float] = []

    async def lane() -> None:
        while (i := next(counter)) < n:
            t0 = time.perf_counter()
            await one(i)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(inflight, n))))
    return n / (time.perf_counter() - t0), lat


class Waiters:
    """Futures keyed by job id, resolved by a subscription callback."""

    def __init__(self) -> None:
        self._futs: dict[str, asyncio.Future] = {}

    def expect(self, key: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._futs[key] = fut
        return fut

    def resolve(self, key: str) -> None:
        fut = self._futs.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
