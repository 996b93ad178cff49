"""Schedule-to-start on the GPU lane: a job no GPU node started in time
moves to the CPU lane (`fallback.reason = "not_started"`).

The fallback router only sees jobs a node took and lost (MAX_DELIVERIES
needs a delivery). A job still queued behind a GPU node that vanished was
never delivered, so it would wait for ever. This scanner finds them.

Where the deadline lives: in JetStream already, as the job message's own
stored timestamp on the GPU lane plus its start timeout
(`options.start_timeout_s`, else GPUBUS_GPU_START_TIMEOUT). Nothing else is
written per job: every scan reads the unstarted messages of each GPU lane
consumer (`first_unstarted_candidate`: from the ack floor on, by subject), so a
gateway that restarts, or another gateway, finds the same deadlines. A
scheduled message (nats-server 2.12+ `Nats-Schedule`) per job would be a
second publish on every GPU submit and one more thing to cancel when the
job starts; the scan costs one consumer listing per interval and a direct
read per waiting GPU job, and GPU lanes are short (GPUBUS_GPU_MAX_BACKLOG).

When the owner has no live GPU node at all (its heartbeat expired), every
waiting GPU job moves at once: a node that vanished should not hold work.
A `gpu: "required"` job never moves: it waits its whole start timeout (a
node may come) and then fails `NO_GPU_NODE`.

Exactly once: the move begins with the mover's start claim
(bus/start_claims.py), the same compare-and-set a GPU node makes before it
starts; whichever is first takes the attempt, the other does nothing. The
move itself is the fallback router's (`queue_attempt` of the CPU attempt,
then the GPU message deleted), idempotent at every step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, RawStreamMsg
from nats.js.errors import NotFoundError

from bus import sealing, start_claims
from bus.jobstore import JobStore
from bus.lag_monitor import busy_lane_consumers
from bus.metrics import GatewayMetrics
from bus.sealing import RecordSeal, SealBroken
from bus.task_cancel import cancel_and_wait
from schemas import codec, names
from schemas.errors import NO_GPU_NODE, NotFound
from schemas.jobs import ErrorInfo, JobMessage, JobRecord, JobStatus, now
from schemas.names import Lane

log = logging.getLogger("gpubus.bus.start_deadline")

NOT_STARTED = "not_started"
SCAN_MAX_PER_LANE = 512  # waiting jobs read per lane and scan; GPU lanes are capped far below
# A job younger than this is not moved for want of a live node: another
# gateway routed it to a node this gateway's registry view may not show yet.
NO_NODE_GRACE_S = 2.0
MoveToCpu = Callable[[JobMessage, int, str], Awaitable[None]]


def start_timeout_s(job: JobMessage, default_s: float) -> float:
    return job.options.start_timeout_s or default_s


def queued_at(raw: RawStreamMsg) -> float:
    """When the attempt was queued: the server's timestamp of the message."""
    return raw.time.timestamp() if raw.time else time.time()


class StartDeadlines:
    """One scanning task per gateway; several gateways scanning at once is
    safe (the start claim decides) and survives any of them."""

    def __init__(
        self,
        js: JetStreamContext,
        jobs: JobStore,
        seal: RecordSeal,
        metrics: GatewayMetrics,
        *,
        default_timeout_s: float,
        interval_s: float,
        gpu_live: Callable[[str], bool],
        move: MoveToCpu,
    ) -> None:
        self._js = js
        self._jobs = jobs
        self._seal = seal
        self._metrics = metrics
        self._default_s = default_timeout_s
        self._interval_s = interval_s
        self._gpu_live = gpu_live
        self._move = move
        self._task: asyncio.Task[None] | None = None
        self.moved = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="start-deadlines")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except Exception as e:  # NATS away for a moment: the next scan sees the same deadlines
                log.warning("start deadline scan failed: %s", e)
            await asyncio.sleep(self._interval_s)

    async def scan(self) -> int:
        """One pass over every GPU lane; returns how many jobs it moved."""
        moved, overdue = 0, dict[str, int]()  # overdue per owner, over its GPU queues (one per priority)
        for info in await busy_lane_consumers(self._js):  # the queues holding jobs, asked about alone
            queue = names.parse_consumer_name(info.name or "")
            # each priority's consumer; unacked too: a job a node took ahead of its engine has not started
            if queue is not None and queue.lane is Lane.GPU and (info.num_pending or info.num_ack_pending):
                lane_moved, lane_overdue = await self._scan_lane(queue, info)
                moved += lane_moved
                overdue[queue.queue_owner] = overdue.get(queue.queue_owner, 0) + lane_overdue
        self._metrics.start_overdue.clear()
        for owner, n in overdue.items():
            if n:
                self._metrics.start_overdue.labels(owner=owner).set(n)
        self.moved += moved
        return moved

    async def _scan_lane(self, queue: names.LaneQueue, info: ConsumerInfo) -> tuple[int, int]:
        """The queue's unstarted messages, oldest first; each one due moves.
        Returns (moved, due but not moved: the move failed)."""
        seq = first_unstarted_candidate(info)
        subject = queue.filter
        no_node = not self._gpu_live(queue.queue_owner)
        moved = overdue = 0
        for _ in range(SCAN_MAX_PER_LANE):
            try:
                raw = await self._js.get_msg(names.JOBS_STREAM, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                break
            seq = raw.seq or seq + 1
            job = self._job(raw)
            if job is None:
                continue
            waited = time.time() - queued_at(raw)
            timed_out = waited >= start_timeout_s(job, self._default_s)
            orphaned = no_node and waited >= NO_NODE_GRACE_S and not job.options.gpu_required
            if timed_out or orphaned:
                try:
                    moved += await self._take(job, seq, waited, no_node)
                except Exception as e:  # the next scan tries again; the gauge shows it meanwhile
                    overdue += 1
                    log.warning("job %s not moved off the GPU lane (%s: %s)", job.job_id, type(e).__name__, e)
        return moved, overdue

    def _job(self, raw: RawStreamMsg) -> JobMessage | None:
        """A gateway-sealed job message, or None (a node terms garbage; the
        mover only leaves it alone)."""
        try:
            self._seal.check(raw.subject or "", raw.data or b"", (raw.headers or {}).get(sealing.HEADER))
            return codec.decode(raw.data or b"", JobMessage)
        except (SealBroken, codec.DecodeError) as e:
            log.error("GPU lane message at seq %s not a sealed job (%s); left alone", raw.seq, e)
            return None

    async def _take(self, job: JobMessage, seq: int, waited_s: float, no_node: bool) -> int:
        if not await start_claims.mover_holds(self._js, job.owner, job.job_id, job.attempt):
            return 0  # a GPU node started it first: it runs there
        if job.options.gpu_required:
            await self._fail(job, seq, waited_s)
            return 1
        log.info(
            "job %s owner=%s not started on the GPU lane after %.1fs (%s); moving it to the CPU lane",
            job.job_id,
            job.owner,
            waited_s,
            "no live GPU node" if no_node else "start timeout",
        )
        await self._move(job, seq, NOT_STARTED)
        return 1

    async def _fail(self, job: JobMessage, seq: int, waited_s: float) -> None:
        """A required-GPU job nobody started: failed, its message removed."""
        was_terminal = True

        def mutate(r: JobRecord) -> JobRecord | None:
            nonlocal was_terminal  # as of the revision the CAS wins on
            was_terminal = r.terminal
            return no_gpu_node(r, job, waited_s)

        try:
            rec = await self._jobs.update(job.owner, job.job_id, mutate)
        except NotFound:
            rec = None
        if rec is not None and not was_terminal and rec.terminal:
            self._metrics.jobs_finished.labels(
                lane=rec.lane.value, kind=rec.kind, status=rec.status.value, code=NO_GPU_NODE
            ).inc()
            log.warning("job %s owner=%s failed: %s after %.1fs", job.job_id, job.owner, NO_GPU_NODE, waited_s)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_msg(names.JOBS_STREAM, seq)


def first_unstarted_candidate(info: ConsumerInfo) -> int:
    """Where a lane's scan begins. A node that prefetches holds delivered
    jobs it has not started (they wait for its engine; it claims a start
    only at the engine, bus/job_run.py), so with one delivery per attempt
    (GPUBUS_GPU_MAX_DELIVER=1, the default) the scan begins at the ack
    floor: whatever a node already claimed, `mover_holds` leaves alone.
    With more deliveries, a claimed attempt's redelivery proceeds without
    its claim (bus/start_claims.py), so delivered messages are not the
    mover's: the scan begins after the last delivered one."""
    if info.config.max_deliver == 1:
        return (info.ack_floor.stream_seq if info.ack_floor else 0) or 0
    return (info.delivered.stream_seq if info.delivered else 0) or 0


def no_gpu_node(rec: JobRecord, job: JobMessage, waited_s: float) -> JobRecord | None:
    """Record update for a required-GPU attempt no node started (None: moved on already)."""
    if rec.terminal or rec.attempts != job.attempt or rec.lane is not Lane.GPU:
        return None
    rec.status = JobStatus.FAILED
    rec.finished_at = now()
    rec.error = ErrorInfo(
        code=NO_GPU_NODE, message=f"gpu required, and no GPU node started the job in {waited_s:.0f} s"
    )
    return rec
