"""Which waiting job a node takes next: fair share across the owners of the
shared pool, priorities within an owner.

A node serves several consumers of one lane (`schemas/names.LaneQueue`):
an owner's node its lane at each priority (`cpu-high_alice`, `cpu_alice`,
`cpu-low_alice`); a shared-pool node every owner's share at each priority
(`cpu-shared-high_alice`, `cpu-shared_alice`, ...) and `cpu_shared`, the
pool's consumer of the layout before shares. JetStream hands out each
consumer's messages in stream order and knows no priorities, so the order
across consumers is decided here, and only ever among jobs already waiting:
a node never takes more than its free slots (CONVENTIONS 5).

Order. The owners with work that may wait form a ring. A take walks it from
the head; each owner gives a share of the free slots (at least one), from
its highest priority with work on, and goes to the back of the ring. So the
pool's owners take turns whatever each has queued (owner A's 200 jobs hold
owner B's one back by at most a turn), and a node with free capacity takes
an owner's high job before its normal ones before its low ones. An owner's
own node has a ring of one: strict priority. A priority is a rank within an
owner's turn, not a pass across owners: marking everything high buys an
owner nothing against the others (and `max_priority` caps what a key may
ask for).

Where work may wait, without asking every consumer: the doorbell. JOBS
republishes the headers of each stored job message on `queued.<subject>`
(the stream's `republish`, after the store). A node subscribes to its
lane's doorbells; each marks its queue. A take from a marked queue that
comes back short unmarks it, unless a doorbell of that queue rang meanwhile
(the `rung` count). The store is not the end of it: the server tells a
stream's consumers of a new message on a queue of its own, after the
republish, and a `no_wait` pull that comes first is told "no messages". So
the first take after a doorbell asks for one message with a short
`expires`, which the server answers the moment the consumer counts it (or
with 408 when another node took it first), and only then drains the rest;
but while the last message taken from a queue said the consumer counted
more behind it, a take asks for those at once (a flood of jobs rings a
doorbell for each, and the wait-then-drain was two round trips per take).
What no doorbell announces (a nak with a delay, an ack_wait that ran
out, whatever rang while the node was disconnected) is found by the
reconcile, at most every RECONCILE_S: the node marks every queue where
work may wait (an owner's node its three; the pool node those of the
subjects JOBS holds on the pool, from one subject-filtered stream info).

The open pull. A job that comes one at a time to an idle node paid the
doorbell, then the pull it prompts: two hops where a raw JetStream worker,
its one pull waiting, pays none. So an owner's idle node keeps one pull
open on one queue (`open_queue`, pulled by bus/node_runtime.py with a slot
held for it), and a job stored there is delivered at once. A pull request
cannot be taken back, so which queue is what keeps priorities: the
owner's top queue, high once the owner has one (nothing may pass a high
job, and a high job passing waiting normal or low ones is the order), else
normal, which passes only low jobs. The one exception: while the owner's
first high jobs arrive, a pull opened on normal before them is still out
(at most the 2 s it waits) and may start a normal job ahead of a high one
that finds the node's other slots full. Never on the shared pool: a pull
open on one owner's share would let that owner skip the ring.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from bus.pulling import Puller
from schemas import names
from schemas.names import PRIORITY_ORDER, Lane, LaneQueue, Priority

log = logging.getLogger("gpubus.bus.intake")

RECONCILE_S = 2.0
# How long the first take after a doorbell waits for the consumer to count
# the stored job: it is answered as soon as it does (microseconds to
# milliseconds); the whole wait is spent only when another node took the job.
FRESH_WAIT_S = 0.1
Launch = Callable[[Msg], Awaitable[None]]
Waiting = Callable[[], Awaitable[Iterable[LaneQueue]]]


@dataclass
class _Mark:
    queue: LaneQueue
    marked: bool = False
    rung: int = 0  # doorbells so far: a short take unmarks only if none rang during it
    taken_at_rung: int = 0  # `rung` when the last take began: less than `rung`, a doorbell is fresh
    # The consumer's pending count after the last message taken from it: a
    # backlog it has counted already, which a `no_wait` pull finds.
    backlog: int = 0


def _owner_key(queue: LaneQueue) -> str:
    return queue.job_owner or ""  # "": `cpu_shared`, one FIFO of every owner's old-layout jobs


def doorbell_queue(msg: Msg) -> LaneQueue | None:
    """The queue a doorbell rings for, if it is one: a republish of JOBS
    carries the stream's own headers, naming the stored job's subject. A
    user node's doorbells live in the `NODES` account, where another
    owner's node can land a server's answer by naming that subject as its
    reply (an event's PubAck, say); such a message has no JOBS headers and
    rings nothing (docs/SECURITY.md)."""
    headers = msg.headers or {}
    stored = headers.get("Nats-Subject", "")
    if headers.get("Nats-Stream") != names.JOBS_STREAM or not stored.startswith("jobs."):
        return None
    if msg.subject != f"{names.QUEUED_PREFIX}.{stored.removeprefix('jobs.')}":
        return None
    return names.queue_of_subject(msg.subject)


def own_waiting(queue_owner: str, lane: Lane) -> Waiting:
    """An owner's node: work may wait on any of its three queues (a queue
    not made yet answers 503 at once, like an empty one)."""
    queues = names.own_queues(queue_owner, lane)

    async def waiting() -> Iterable[LaneQueue]:
        return queues

    return waiting


def pool_waiting(js: JetStreamContext, lane: Lane) -> Waiting:
    """The pool node: the queues of every pool subject that holds messages
    (queued or running), in one request whose answer grows with the owners
    that have work, not with all owners."""

    async def waiting() -> Iterable[LaneQueue]:
        info = await js.stream_info(names.JOBS_STREAM, subjects_filter=names.lane_filter(names.SHARED, lane))
        found = (names.queue_of_subject(subject) for subject in info.state.subjects or {})
        return [q for q in found if q is not None]

    return waiting


class Intake:
    """The ring of owners whose queues are marked, and the takes from it."""

    def __init__(
        self, puller: Puller, queue_owner: str, lane: Lane, waiting: Waiting, *, reconcile_s: float = RECONCILE_S
    ) -> None:
        self._puller = puller
        self._queue_owner = queue_owner
        self._lane = lane
        self._waiting = waiting
        self._reconcile_s = reconcile_s
        self._ring: OrderedDict[str, dict[Priority, _Mark]] = OrderedDict()
        self._reconciled_at = -math.inf
        # Whether the owner has a high queue (then the open pull is on it); None: not known, no open pull.
        self._high_made: bool | None = False
        self.wake = asyncio.Event()  # set by a doorbell (or by whoever stops the node)

    def __repr__(self) -> str:
        return f"<Intake {self._queue_owner}/{self._lane} owners={len(self._ring)}>"

    async def find_high(self, js: JetStreamContext) -> None:
        """Whether the owner's high queue was made before the node started
        (by its first high job; a later one's doorbell tells the node).
        Unread, the node opens no pull until a high doorbell says: one on
        normal might pass a high job."""
        if self._queue_owner == names.SHARED:
            return
        try:
            await js.consumer_info(names.JOBS_STREAM, LaneQueue(self._queue_owner, self._lane, Priority.HIGH).consumer)
        except NotFoundError:
            return
        except Exception as e:
            log.warning("whether %s/%s has a high queue not read: %s", self._queue_owner, self._lane, e)
            self._high_made = None
            return
        self._high_made = True

    def open_queue(self) -> LaneQueue | None:
        """The one queue an idle node keeps a pull open on (module doc)."""
        if self._queue_owner == names.SHARED or self._high_made is None:
            return None
        return LaneQueue(self._queue_owner, self._lane, Priority.HIGH if self._high_made else Priority.NORMAL)

    def mark(self, queue: LaneQueue, *, rung: bool = False) -> None:
        """Work may wait on `queue`; an owner new to the ring joins at the back."""
        marks = self._ring.get(_owner_key(queue))
        if marks is None:
            marks = self._ring[_owner_key(queue)] = {}
        m = marks.setdefault(queue.priority, _Mark(queue))
        m.marked = True
        if rung:
            m.rung += 1
            if queue.priority is Priority.HIGH:
                self._high_made = True
            self.wake.set()

    async def on_doorbell(self, msg: Msg) -> None:
        """The subscription callback for `names.queued_filter` of the lane."""
        queue = doorbell_queue(msg)
        if queue is not None and queue.queue_owner == self._queue_owner and queue.lane is self._lane:
            self.mark(queue, rung=True)

    async def wait(self, timeout_s: float, open_pull: asyncio.Task[None] | None = None) -> None:
        """Until a doorbell rings, the node's open pull ends, or `timeout_s`
        (a reconcile is then due)."""
        wake = asyncio.ensure_future(self.wake.wait())
        waits: list[asyncio.Task[Any]] = [wake] if open_pull is None else [wake, open_pull]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()

    async def take(self, n: int, launch: Launch) -> int:
        """Up to `n` waiting messages in ring order, each handed to `launch`
        as it comes (a job starts while the next owner is asked); returns
        how many were launched."""
        self.wake.clear()  # a doorbell from here on makes the next wait return at once
        if time.monotonic() - self._reconciled_at >= self._reconcile_s:
            await self._reconcile()
        taken = 0
        while taken < n and self._ring:
            before = taken
            share = max(1, (n - taken) // len(self._ring))
            for key in list(self._ring):
                if taken >= n:
                    break
                marks = self._ring[key]
                for msg in await self._take_owner(marks, min(share, n - taken)):
                    taken += 1
                    await launch(msg)
                if any(m.marked for m in marks.values()):
                    self._ring.move_to_end(key)  # its turn is over
                else:
                    del self._ring[key]
            if taken == before:
                break
        return taken

    async def _take_owner(self, marks: dict[Priority, _Mark], want: int) -> list[Msg]:
        """One owner's turn: from its highest marked priority down."""
        out: list[Msg] = []
        for priority in PRIORITY_ORDER:
            m = marks.get(priority)
            if m is None or not m.marked or len(out) >= want:
                continue
            asked, rung = want - len(out), m.rung
            msgs = await self._take(m, asked)
            if len(msgs) < asked and m.rung == rung:
                m.marked = False
            out += msgs
        return out

    async def _take(self, m: _Mark, asked: int) -> list[Msg]:
        """Up to `asked` from one queue; after a fresh doorbell, the first
        one waited for (module doc). Under a flood every take comes after a
        fresh doorbell, and the wait for one, then the drain, were two
        round trips per take, most of a node's pull loop: while the last
        message taken said more were counted behind it, those are asked for
        at once (`no_wait`), and only what that leaves short is taken the
        usual way, the doorbell still fresh for it."""
        counted = m.backlog > 0
        out = await self._puller.take_available(asked, m.queue.consumer) if counted else []
        if len(out) < asked:
            consumer, fresh = m.queue.consumer, m.rung != m.taken_at_rung
            m.taken_at_rung = m.rung
            if fresh:
                out += await self._take_fresh(consumer, asked - len(out))
            elif not counted:  # a `no_wait` pull just came back short: no second one
                out += await self._puller.take_available(asked, consumer)
        m.backlog = out[-1].metadata.num_pending if out else 0
        if out and m.queue.priority is Priority.HIGH:
            self._high_made = True
        return out

    async def _take_fresh(self, consumer: str, asked: int) -> list[Msg]:
        try:
            return await self._puller.next_batch(max_batch=asked, wait_s=FRESH_WAIT_S, durable=consumer)
        except APIError as e:  # 503: the consumer is gone (deleted, or its server down); the reconcile tries again
            log.warning("pull from %s refused: %s", consumer, e)
            return []

    async def _reconcile(self) -> None:
        self._reconciled_at = time.monotonic()
        try:
            for queue in await self._waiting():
                self.mark(queue)
        except Exception as e:  # NATS away for a moment: doorbells still mark, the next reconcile retries
            log.warning("where jobs wait on %s/%s not read: %s", self._queue_owner, self._lane, e)
