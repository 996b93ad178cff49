"""Queue depth and lag of every lane consumer on JOBS, polled on an interval.

Prometheus may scrape every few seconds, from several servers; asking
JetStream per scrape would multiply that by every consumer. Instead one task
per gateway polls on `GPUBUS_LAG_POLL_INTERVAL` and keeps a snapshot that
/metrics and /api/v1/auth/queue-info read for free.

A poll asks only about the queues that hold jobs: one `STREAM.INFO` with a
subject filter counts JOBS' messages per subject (a subject is a queue and
a kind: only those with jobs are named), then one `CONSUMER.INFO` per queue
found there and one `STREAM.MSG.GET` per consumer that has unacked jobs; the
consumers that hold nothing are known by name only (`CONSUMER.NAMES`, 1,024
a page) and reported at 0. Listing every consumer's info instead cost, at
10,000 owners (20,000 consumers), 79 pages and 2.5 s a poll, with the GPU
start scan doing it every second: 43 % of a core of an idle gateway and
53 % of nats-server's (docs/ARCHITECTURE.md, "Measured: owners at scale").
For a consumer that holds jobs:

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
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, SequenceInfo
from nats.js.errors import NotFoundError

from bus.errors import BusError
from bus.metrics import GatewayMetrics
from bus.node_permissions import JS_API
from bus.task_cancel import cancel_and_wait
from schemas import names
from schemas.names import SHARED, Lane, Priority

log = logging.getLogger("gpubus.bus.lag_monitor")

CONSUMER_LIST_PAGE = 256  # the server's JSApiListLimit
CONSUMER_NAMES_PAGE = 1024  # the server's JSApiNamesLimit
CONCURRENT_GETS = 16
API_WAIT_S = 5.0
SUBJECT_DETAILS_LIMIT = 100_000  # nats-server's JSMaxSubjectDetails: a stream info names no more subjects
SHOWN_AFTER_BUSY_S = 900.0  # a queue's series stay in /metrics this long after it last held jobs


class ConsumerNamesFailed(BusError):
    """The server answered `CONSUMER.NAMES` with an error."""

    code = "CONSUMER_NAMES_FAILED"


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
    busy_at: float | None = None  # the last poll that found jobs on it (this gateway's polls); None: never

    def lag_s(self, at: float) -> float:
        return _age(at, self.oldest_at)

    def oldest_wait_s(self, at: float) -> float:
        return _age(at, self.oldest_waiting_at)

    def shown(self, at: float) -> bool:
        """Worth a series in /metrics: it holds jobs or did lately, so a
        drained queue is seen falling to 0 before its series goes; the
        thousands of owners who queued nothing lately add none."""
        return self.busy_at is not None and at - self.busy_at <= SHOWN_AFTER_BUSY_S


def _idle(queue: names.LaneQueue) -> ConsumerLag:
    """A lane consumer that holds no job (and what every poll's entry for
    the queue starts from)."""
    return ConsumerLag(
        consumer=queue.consumer,
        owner=queue.queue_owner,
        lane=queue.lane,
        pending=0,
        ack_pending=0,
        redelivered=0,
        oldest_at=None,
        priority=queue.priority,
        job_owner=queue.job_owner,
    )


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
    """One poll's queues. Read on every queue-info request and scrape, so
    what those ask for is worked out once per poll (cached), not per
    request over every consumer."""

    at: float | None = None  # when the poll that made it finished; None before the first
    consumers: tuple[ConsumerLag, ...] = field(default_factory=tuple)

    def by_owner(self) -> list[OwnerWaiting]:
        """Waiting and running jobs per owner and priority (sorted by owner,
        then high before normal before low)."""
        return self._by_owner

    @cached_property
    def _by_owner(self) -> list[OwnerWaiting]:
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

    def waiting_of(self, owner: str) -> list[OwnerWaiting]:
        """`by_owner()`'s entries of one owner."""
        return self._waiting_by_owner.get(owner, [])

    @cached_property
    def _waiting_by_owner(self) -> dict[str, list[OwnerWaiting]]:
        out: dict[str, list[OwnerWaiting]] = {}
        for w in self._by_owner:
            out.setdefault(w.owner, []).append(w)
        return out

    def of_job_owner(self, owner: str | None) -> list[ConsumerLag]:
        """The consumers whose jobs are `owner`'s (None: `cpu_shared`'s, anybody's)."""
        return self._by_job_owner.get(owner, [])

    @cached_property
    def _by_job_owner(self) -> dict[str | None, list[ConsumerLag]]:
        out: dict[str | None, list[ConsumerLag]] = {}
        for c in self.consumers:
            out.setdefault(c.job_owner, []).append(c)
        return out

    @cached_property
    def pool(self) -> list[ConsumerLag]:
        """The shared pool's consumers: every owner's share and `cpu_shared`."""
        return [c for c in self.consumers if c.owner == SHARED]


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


async def lane_consumer_names(nc: NatsClient) -> list[names.LaneQueue]:
    """Every lane consumer on JOBS, by name only: a page holds 1,024 of
    them at a few bytes each, where an info is a kilobyte."""
    out: list[names.LaneQueue] = []
    subject = f"{JS_API}.CONSUMER.NAMES.{names.JOBS_STREAM}"
    offset = 0
    while True:
        reply = await nc.request(subject, json.dumps({"offset": offset}).encode(), timeout=API_WAIT_S)
        page = json.loads(reply.data)
        if "error" in page:
            raise ConsumerNamesFailed(f"{subject}: {page['error'].get('description')}")
        got = page.get("consumers") or []
        out += [q for q in map(names.parse_consumer_name, got) if q is not None]
        offset += len(got)  # every name counts toward the next page, a lane consumer's or not
        if len(got) < CONSUMER_NAMES_PAGE:
            return out


async def _queues_holding_jobs(js: JetStreamContext) -> set[str] | None:
    """Names of the lane consumers whose subjects hold messages on JOBS
    (waiting, running, or left for the fallback router), from one request;
    None when the server would page the subjects (100,000 of them at
    once: then every consumer's info is read instead)."""
    info = await js.stream_info(names.JOBS_STREAM, subjects_filter=names.JOBS_SUBJECTS)
    subjects = info.state.subjects or {}
    if len(subjects) >= SUBJECT_DETAILS_LIMIT:
        return None
    queues = (names.queue_of_subject(subject) for subject, count in subjects.items() if count)
    return {q.consumer for q in queues if q is not None}


async def busy_lane_consumers(js: JetStreamContext) -> list[ConsumerInfo]:
    """The info of every lane consumer that holds jobs, asking only about
    those (the rest hold nothing to report)."""
    busy = await _queues_holding_jobs(js)
    if busy is None:
        return [c for c in await list_lane_consumers(js) if c.num_pending or c.num_ack_pending]
    gate = asyncio.Semaphore(CONCURRENT_GETS)

    async def one(name: str) -> ConsumerInfo | None:
        async with gate:
            try:
                info: ConsumerInfo = await js.consumer_info(names.JOBS_STREAM, name)
            except NotFoundError:  # jobs queued before its consumer was made, or it was removed
                return None
            return info

    return [c for c in await asyncio.gather(*(one(n) for n in sorted(busy))) if c is not None]


async def _lag(js: JetStreamContext, info: ConsumerInfo, queue: names.LaneQueue, at: float) -> ConsumerLag:
    oldest = await oldest_unacked_at(js, info)
    waiting = await oldest_waiting_at(js, info, oldest)
    held = bool(info.num_pending or info.num_ack_pending)
    return replace(
        _idle(queue),
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        redelivered=int(info.num_redelivered or 0),
        oldest_at=oldest,
        oldest_waiting_at=waiting,
        busy_at=at if held else None,
    )


async def poll(js: JetStreamContext, nc: NatsClient, previous: QueueSnapshot | None = None) -> QueueSnapshot:
    """Every lane consumer: counts and ages of those that hold jobs, 0 for
    the rest; `busy_at` carried over from `previous` for a queue that
    held jobs at an earlier poll."""
    at = time.time()
    queues = {q.consumer: q for q in await lane_consumer_names(nc)}
    busy = await busy_lane_consumers(js)
    gate = asyncio.Semaphore(CONCURRENT_GETS)

    async def one(info: ConsumerInfo, queue: names.LaneQueue) -> ConsumerLag:
        async with gate:
            return await _lag(js, info, queue, at)

    found = [(info, names.parse_consumer_name(info.name or "")) for info in busy]
    lags = {c.consumer: c for c in await asyncio.gather(*(one(info, q) for info, q in found if q is not None))}
    everyone = {name: _idle(queue) for name, queue in queues.items()} | lags  # one made meanwhile too
    consumers = _busy_before(everyone.values(), previous.consumers if previous else ())
    return QueueSnapshot(at=time.time(), consumers=tuple(sorted(consumers, key=lambda c: c.consumer)))


def _busy_before(now: Iterable[ConsumerLag], before: Iterable[ConsumerLag]) -> list[ConsumerLag]:
    """`now`, each idle one with the time an earlier poll found it busy."""
    last_busy = {c.consumer: c.busy_at for c in before if c.busy_at is not None}
    return [
        replace(c, busy_at=last_busy[c.consumer]) if c.busy_at is None and c.consumer in last_busy else c for c in now
    ]


class LagMonitor:
    def __init__(self, js: JetStreamContext, nc: NatsClient, *, interval_s: float, metrics: GatewayMetrics) -> None:
        self._js = js
        self._nc = nc
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
            self._snapshot = await poll(self._js, self._nc, self._snapshot)
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
