"""Queue depth and lag of every lane consumer on JOBS, polled on an interval.

Prometheus may scrape every few seconds, from several servers; asking
JetStream per scrape would multiply that by every consumer. Instead one task
per gateway polls on `GPUBUS_LAG_POLL_INTERVAL` and keeps a snapshot that
/metrics and /api/v1/auth/queue-info read for free.

One poll costs one `CONSUMER.LIST` request on JOBS (paged at 256 consumers)
plus one `STREAM.MSG.GET` per consumer that has unacked jobs:

- pending, ack pending and redelivered are the consumer info's
  `num_pending`, `num_ack_pending` and `num_redelivered`;
- lag is the age of the oldest job not yet acked. JOBS is a work queue, so an
  acked job is deleted from the stream; every job with a stream sequence above
  the consumer's ack floor is either acked-and-gone or still unacked. The
  first message on the consumer's filter subject at or after
  `ack_floor.stream_seq + 1` (a next-by-subject get) is therefore the oldest
  unacked job, and its stream timestamp is when it entered this queue. When
  nothing is ack-pending the search starts past `delivered.stream_seq`
  instead, which skips a message left behind after its last delivery
  expired (a GPU job at max_deliver, waiting for the fallback router to move
  it). A queue with nothing pending or ack-pending has lag 0 without a get.

The timestamp is the server's; the age is taken against this host's clock
and clamped at 0, so clock skew between gateway and NATS shows up as an error
of that size, never as a negative lag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from bus.metrics import GatewayMetrics
from schemas import names
from schemas.names import Lane

log = logging.getLogger("gpubus.bus.lag_monitor")

CONSUMER_LIST_PAGE = 256  # the server's JSApiListLimit
CONCURRENT_GETS = 16


@dataclass(frozen=True)
class ConsumerLag:
    consumer: str
    owner: str  # the queue owner: a user id, or `shared`
    lane: Lane
    pending: int
    ack_pending: int
    redelivered: int
    oldest_at: float | None  # stream timestamp (unix s) of the oldest unacked job

    def lag_s(self, at: float) -> float:
        return max(0.0, at - self.oldest_at) if self.oldest_at is not None else 0.0


@dataclass(frozen=True)
class QueueSnapshot:
    at: float | None = None  # when the poll that made it finished; None before the first
    consumers: tuple[ConsumerLag, ...] = field(default_factory=tuple)


async def list_lane_consumers(js: JetStreamContext) -> list[ConsumerInfo]:
    """Every consumer on JOBS whose name is a lane consumer's."""
    out: list[ConsumerInfo] = []
    offset = 0
    while True:
        page = await js.consumers_info(names.JOBS_STREAM, offset=offset or None)
        out += [c for c in page if names.parse_consumer_name(c.name or "")]
        if len(page) < CONSUMER_LIST_PAGE:
            return out
        offset += len(page)


async def oldest_unacked_at(js: JetStreamContext, info: ConsumerInfo) -> float | None:
    """Stream timestamp of the consumer's oldest unacked job (see module doc)."""
    if not (info.num_pending or info.num_ack_pending):
        return None
    seen = info.ack_floor if info.num_ack_pending else info.delivered
    floor = (seen.stream_seq if seen else None) or 0
    try:
        msg = await js.get_msg(names.JOBS_STREAM, seq=floor + 1, subject=info.config.filter_subject, next=True)
    except NotFoundError:  # acked between the list and the get
        return None
    return msg.time.timestamp() if msg.time else None


async def poll(js: JetStreamContext) -> QueueSnapshot:
    infos = await list_lane_consumers(js)
    gate = asyncio.Semaphore(CONCURRENT_GETS)

    async def one(info: ConsumerInfo) -> ConsumerLag:
        parsed = names.parse_consumer_name(info.name or "")
        assert parsed is not None  # list_lane_consumers keeps lane consumers only
        owner, lane = parsed
        async with gate:
            oldest = await oldest_unacked_at(js, info)
        return ConsumerLag(
            consumer=info.name,
            owner=owner,
            lane=lane,
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            redelivered=int(info.num_redelivered or 0),
            oldest_at=oldest,
        )

    consumers = await asyncio.gather(*(one(i) for i in infos))
    return QueueSnapshot(at=time.time(), consumers=tuple(sorted(consumers, key=lambda c: c.consumer)))


class LagMonitor:
    def __init__(self, js: JetStreamContext, *, interval_s: float, metrics: GatewayMetrics) -> None:
        self._js = js
        self._interval_s = interval_s
        self._metrics = metrics
        self._snapshot = QueueSnapshot()
        self._task: asyncio.Task[None] | None = None

    def snapshot(self) -> QueueSnapshot:
        return self._snapshot

    async def start(self) -> None:
        """First poll before returning, so the first scrape has numbers."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def refresh(self) -> QueueSnapshot:
        """Poll now; on failure keep the last snapshot (its age shows it)."""
        t0 = time.perf_counter()
        try:
            self._snapshot = await poll(self._js)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # NATS away or slow: the next tick tries again
            self._metrics.lag_polls.labels(result="error").inc()
            log.warning("lag poll of %s consumers failed: %s", names.JOBS_STREAM, e)
        else:
            self._metrics.lag_polls.labels(result="ok").inc()
        self._metrics.lag_poll_seconds.set(time.perf_counter() - t0)
        return self._snapshot

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.refresh()
