"""Queue depth and lag of every lane consumer on JOBS, polled on an interval.

Prometheus may scrape every few seconds, from several servers; asking
JetStream per scrape would multiply that by every consumer. Instead one task
per gateway polls on `GPUBUS_LAG_POLL_INTERVAL` and keeps a snapshot that
/metrics and /api/v1/auth/queue-info read for free.

One poll costs one `CONSUMER.LIST` request on JOBS (paged at 256 consumers)
plus one `STREAM.MSG.GET` per consumer that has unacked jobs:

- pending, ack pending and redelivered are the consumer info's
  `num_pending`, `num_ack_pending` and `num_redelivered`;
- the oldest wait is the age of the oldest job not yet delivered: the first
  message on the consumer's filter after `delivered.stream_seq` (a consumer
  delivers in stream order); a second get, only where jobs both wait and run;
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
from nats.js.api import ConsumerInfo, SequenceInfo
from nats.js.errors import NotFoundError

from bus.metrics import GatewayMetrics
from bus.task_cancel import cancel_and_wait
from schemas import names
from schemas.names import SHARED, Lane, Priority

log = logging.getLogger("gpubus.bus.lag_monitor")

CONSUMER_LIST_PAGE = 256  # the server's JSApiListLimit
CONCURRENT_GETS = 16


def _age(at: float, since: float | None) -> float:
    return max(0.0, at - since) if since is not None else 0.0


@dataclass(frozen=True)
class ConsumerLag:
    consumer: str
    owner: str  # the queue owner: a user id, or `shared`
    lane: Lane
    pending: int
    ack_pending: int
    redelivered: int
    oldest_at: float | None  # stream timestamp (unix s) of the oldest unacked job
    priority: Priority = Priority.NORMAL
    job_owner: str | None = None  # whose jobs: the owner, a pool share's owner; None on `cpu_shared`
    oldest_waiting_at: float | None = None  # stream timestamp of the oldest job not yet delivered

    def lag_s(self, at: float) -> float:
        return _age(at, self.oldest_at)

    def oldest_wait_s(self, at: float) -> float:
        return _age(at, self.oldest_waiting_at)


@dataclass(frozen=True)
class OwnerWaiting:
    """One owner's jobs of one priority, over its own lanes and its share of
    the pool (`owner` is `shared` for pool jobs of the layout before shares,
    whose owner no consumer tells)."""

    owner: str
    priority: Priority
    waiting: int
    running: int
    oldest_waiting_at: float | None

    def oldest_wait_s(self, at: float) -> float:
        return _age(at, self.oldest_waiting_at)


@dataclass(frozen=True)
class QueueSnapshot:
    at: float | None = None  # when the poll that made it finished; None before the first
    consumers: tuple[ConsumerLag, ...] = field(default_factory=tuple)

    def by_owner(self) -> list[OwnerWaiting]:
        """Waiting and running jobs per owner and priority (sorted by owner,
        then high before normal before low)."""
        sums: dict[tuple[str, Priority], tuple[int, int, float | None]] = {}
        for c in self.consumers:
            key = (c.job_owner or SHARED, c.priority)
            waiting, running, oldest = sums.get(key, (0, 0, None))
            if c.oldest_waiting_at is not None:
                oldest = c.oldest_waiting_at if oldest is None else min(oldest, c.oldest_waiting_at)
            sums[key] = (waiting + c.pending, running + c.ack_pending, oldest)
        return [
            OwnerWaiting(owner, priority, *sums[(owner, priority)])
            for owner, priority in sorted(sums, key=lambda k: (k[0], names.priority_rank(k[1])))
        ]


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


async def _first_after(js: JetStreamContext, info: ConsumerInfo, floor: int) -> float | None:
    """Stream timestamp of the first message on the consumer's filter past `floor`."""
    try:
        msg = await js.get_msg(names.JOBS_STREAM, seq=floor + 1, subject=info.config.filter_subject, next=True)
    except NotFoundError:  # acked between the list and the get
        return None
    return msg.time.timestamp() if msg.time else None


def _seq(seen: SequenceInfo | None) -> int:
    return (seen.stream_seq if seen else None) or 0


async def oldest_unacked_at(js: JetStreamContext, info: ConsumerInfo) -> float | None:
    """Stream timestamp of the consumer's oldest unacked job (see module doc)."""
    if not (info.num_pending or info.num_ack_pending):
        return None
    return await _first_after(js, info, _seq(info.ack_floor if info.num_ack_pending else info.delivered))


async def oldest_waiting_at(js: JetStreamContext, info: ConsumerInfo, unacked_at: float | None) -> float | None:
    """Stream timestamp of the consumer's oldest job not yet delivered: the
    oldest unacked one when nothing is delivered (no second get)."""
    if not info.num_pending:
        return None
    if not info.num_ack_pending:
        return unacked_at
    return await _first_after(js, info, _seq(info.delivered))


async def poll(js: JetStreamContext) -> QueueSnapshot:
    infos = await list_lane_consumers(js)
    gate = asyncio.Semaphore(CONCURRENT_GETS)

    async def one(info: ConsumerInfo) -> ConsumerLag:
        queue = names.parse_consumer_name(info.name or "")
        assert queue is not None  # list_lane_consumers keeps lane consumers only
        async with gate:
            oldest = await oldest_unacked_at(js, info)
            waiting = await oldest_waiting_at(js, info, oldest)
        return ConsumerLag(
            consumer=info.name,
            owner=queue.queue_owner,
            lane=queue.lane,
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            redelivered=int(info.num_redelivered or 0),
            oldest_at=oldest,
            priority=queue.priority,
            job_owner=queue.job_owner,
            oldest_waiting_at=waiting,
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
        await cancel_and_wait(self._task)

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
