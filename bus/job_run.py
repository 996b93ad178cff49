"""One job's run on a node: check the message, stage its files, run the
processor in a worker thread, store the result, keep the lease alive.

The runtime (bus/node_runtime.py) decides *when* a job runs and holds its
slot; this module decides *how*: `read_job` refuses what is not ours,
`JobRun.execute` does the work inside `bus/acking.settle`, the one place
that acks, naks or terms. What a job needs on disk comes from the
processor (`Processor.staging`), so nothing here knows about media.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus import objects, sealing
from bus.acking import StartLost, settle
from bus.engine_slots import EngineSlots
from bus.job_events import STARTED_GRACE_S, EventReporter, StartNotice
from bus.joblog import job_fields
from bus.metrics import NodeMetrics
from bus.retry import retrying
from bus.sealing import RecordSeal
from schemas import codec, names
from schemas.errors import INPUT_CORRUPT, INPUT_MISSING, Forbidden, JobCancelled, JobFailed, NotFound
from schemas.events import INLINE_RESULT_MAX, EventType, TextSegment
from schemas.jobs import ErrorInfo, JobMessage
from schemas.names import Lane
from schemas.processing import PAGES, JobOutput, OwnerFile, Phase, Prepares, Processor, progress_unit

log = logging.getLogger("gpubus.bus.node")

PROGRESS_EVERY_S = 0.3
ONE_PHASE = Phase("")  # a processor that names no phase: the job's progress is its media's


@dataclass
class Lease:
    """Proof of life for one job: the processor's progress calls renew it.
    Past `deadline_s` without progress the node stops extending the lease,
    so a hung worker's job times out and falls back."""

    deadline_s: float
    last_progress: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_progress = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_progress < self.deadline_s


@dataclass
class JobContext:
    """What every job of one node shares. `ack_wait_s` and `max_deliver`
    are the consumer's, learned when the node starts."""

    js: JetStreamContext
    processor: Processor
    pool: ThreadPoolExecutor
    events: EventReporter
    metrics: NodeMetrics
    queue_owner: str
    lane: Lane
    node_id: str
    job_deadline_s: float
    # How long each NATS step of a job (input, result, events) is retried
    # through a leader election or a reconnect before the job is nak'ed:
    # a finished transcript lost to seconds of failover is a job redone.
    bus_retry_s: float
    job_seal: RecordSeal | None = None
    inline_result_max: int = INLINE_RESULT_MAX
    # The engine's slots (the node's capacity). A node that prefetches
    # pulls more jobs than this; they stage and prepare their inputs
    # (Processor `prepare`) while the engine runs, then wait here.
    engine: EngineSlots = field(default_factory=lambda: EngineSlots(1))
    ack_wait_s: float = 30.0
    max_deliver: int = -1
    # Asked once a job holds its engine slot, right before `started`: on the
    # GPU lane, whether this node may start the attempt (its start claim,
    # bus/start_claims.py). Claimed at the slot, not at the fetch: a job
    # taken ahead of the engine has not started, and past its start
    # deadline it is the mover's to take.
    start_gate: Callable[[JobMessage, Msg], Awaitable[bool]] | None = None
    # A run that succeeds within this long sends no `started` (bus/job_events.StartNotice).
    started_grace_s: float = STARTED_GRACE_S
    # Jobs taken that have not reached the processor yet, without and with
    # an engine slot: `coming` (bus/job_run.JobRun keeps them).
    before_slot: int = 0
    slotted: int = 0

    def coming(self) -> int:
        """Jobs a gathering processor may still see come
        (schemas/processing.Gathers): those that hold a slot, and as many of
        the rest as there are free slots for (the others cannot come before
        something ends). Read from a worker thread: two ints, no lock."""
        return self.slotted + min(self.before_slot, self.engine.capacity - self.engine.held)


def read_job(ctx: JobContext, msg: Msg) -> JobMessage:
    """The job in `msg`, or `Forbidden`/`DecodeError`/`SealBroken` for a
    message that is not a job of our queue. The trusted shared-pool node
    holds the gateways' seal and checks every message against it; a user's
    node cannot (it never holds the secret) and relies on its account wall
    and the queue check."""
    if ctx.job_seal is not None:
        ctx.job_seal.check(msg.subject, msg.data, (msg.headers or {}).get(sealing.HEADER))
    job = codec.decode(msg.data, JobMessage)
    _check_queue(ctx, job)
    return job


BAD_MESSAGE_ERRORS = (codec.DecodeError, Forbidden, sealing.SealBroken)


def _check_queue(ctx: JobContext, job: JobMessage) -> None:
    """A message on our consumer must belong to our queue; anything else
    was forged onto a subject and is refused, not processed."""
    if job.queue_owner != ctx.queue_owner or job.lane != ctx.lane:
        raise Forbidden(f"job for {job.queue_owner}/{job.lane} on {ctx.queue_owner}/{ctx.lane}")
    if ctx.queue_owner != names.SHARED and job.owner != ctx.queue_owner:
        raise Forbidden(f"job of {job.owner} on {ctx.queue_owner}'s queue")
    if job.input is not None and not names.is_input_of(job.owner, job.job_id, job.input.bucket, job.input.object_name):
        # Even a trusted node reads only the job owner's staged file: a
        # job naming another bucket would turn it into a copying machine.
        raise Forbidden(f"job {job.job_id}'s input {job.input.bucket}/{job.input.object_name} is not its own")


def _make_work_dir(job_id: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"gpubus-{job_id}-"))


class JobRun:
    """One delivery of one job, from `started` to its settled message."""

    def __init__(
        self,
        ctx: JobContext,
        job: JobMessage,
        msg: Msg,
        *,
        cancelled_already: bool = False,
        free_slot: Callable[[], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self._free_slot = free_slot
        self.job = job
        self.msg = msg
        self.lease = Lease(ctx.job_deadline_s)
        self.cancelled = threading.Event()
        if cancelled_already:
            self.cancelled.set()
        self.succeeded = False
        self.announced = False  # the job holds an engine slot (its `started` may wait: `_notice`)
        self._notice: StartNotice | None = None
        self.start_lost = False  # the start-deadline mover took it first: not ours, neither done nor failed
        self._turn = ctx.engine.ticket()  # engine slots go in the order jobs were taken
        self._counted_as: str | None = "before_slot"  # its count in ctx until it reaches the processor (`_reached`)
        ctx.before_slot += 1
        self._last_progress_event = 0.0
        self._phase: str | None = None  # of the last progress event sent
        self._pages = progress_unit(ctx.processor, job.kind) == PAGES
        self._ref = f"{job.job_id} owner={job.owner} lane={ctx.lane} node={ctx.node_id} attempt={job.attempt}"

    def _log_fields(self, state: str, **more: Any) -> dict[str, Any]:
        job = self.job
        return job_fields(job.job_id, job.owner, self.ctx.lane, self.ctx.node_id, state, attempt=job.attempt, **more)

    async def execute(self) -> None:
        """Announce, work, store, report; `settle` turns the outcome into
        ack / nak / term. `succeeded` says how it ended."""
        ctx, job, msg = self.ctx, self.job, self.msg
        ctx.metrics.in_flight.inc()
        keepalive = asyncio.create_task(self._keep_lease(), name=f"lease-{job.job_id}")
        started = time.monotonic()
        try:
            last = ctx.max_deliver > 0 and msg.metadata.num_delivered >= ctx.max_deliver
            async with settle(msg, self._report, job_ref=self._ref, last_delivery=last):
                output = await self._run()
                await self._store_result(output)
                self.succeeded = True
                if self._free_slot is not None:
                    # The work is done and its outcome stored: the ack's
                    # confirmation (a synced write on the server, the longest
                    # step of a short job under load) need not keep the
                    # node from taking its next job.
                    self._free_slot()
        finally:
            self._reached(None)  # ended before the processor, if it did
            if self._notice is not None:
                self._notice.close()  # a nak without a report (settle) leaves no `started` behind
            await ctx.engine.give_up(self._turn)  # ended before it wanted a slot, if it did
            keepalive.cancel()
            status = "succeeded" if self.succeeded else "moved" if self.start_lost else "failed"
            ctx.metrics.in_flight.dec()
            elapsed = time.monotonic() - started
            ctx.metrics.job_done(job.kind, status, elapsed)
            log.info(
                "job %s %s in %.2fs", self._ref, status, elapsed, extra=self._log_fields(status, elapsed_s=elapsed)
            )

    async def _run(self) -> JobOutput:
        """The work directory is made and removed on a pool thread, never on
        the event loop: under disk load a mkdir or rmdir blocks for
        milliseconds, and the loop carries every other job's acks and
        events. A job that needs nothing on disk gets no directory at all."""
        if self.cancelled.is_set():
            raise JobCancelled()
        job, ctx = self.job, self.ctx
        staging = ctx.processor.staging(job)
        loop = asyncio.get_running_loop()
        if job.input is None and not staging.needs_dir:
            output = await self._call_processor(None, None)
        else:
            work_dir = await loop.run_in_executor(ctx.pool, _make_work_dir, job.job_id)
            try:
                await self._stage_owner_files(staging.owner_files, work_dir)
                input_path = await self._fetch_input(work_dir)
                if input_path is not None and isinstance(ctx.processor, Prepares):
                    await loop.run_in_executor(ctx.pool, ctx.processor.prepare, job, input_path, work_dir)
                output = await self._call_processor(input_path, work_dir)
            finally:
                await loop.run_in_executor(ctx.pool, shutil.rmtree, work_dir, True)
        if self.cancelled.is_set():
            raise JobCancelled()
        return output

    async def _call_processor(self, input_path: Path | None, work_dir: Path | None) -> JobOutput:
        """In the worker pool, holding an engine slot only for the run itself
        (storing the result does not stall the next job); its progress calls
        renew the lease from there."""
        async with self.ctx.engine.slot(self._turn):
            self._reached("slotted")
            if self.cancelled.is_set():
                raise JobCancelled()
            if self.ctx.start_gate is not None and not await self.ctx.start_gate(self.job, self.msg):
                self.start_lost = True
                raise StartLost()
            self._notice = StartNotice(self.ctx.events, self.job, self.ctx.started_grace_s, on_send=self._log_started)
            self.announced = True
            return await self._run_in_pool(input_path, work_dir)

    def _log_started(self) -> None:
        """Logged with the `started` event, so the node's log says what its
        events say: a short run that succeeds has one line (its outcome,
        with its time), where two lines a job were 14% of a node's event
        loop on no-op jobs (py-spy)."""
        log.info("job %s started", self._ref, extra=self._log_fields("started"))

    async def _report(self, outcome: str, error: ErrorInfo | None) -> None:
        """`settle`'s report. A job cancelled before it ever started (taken
        ahead of the engine, or cancelled before it was fetched) leaves no
        trace: the gateway that cancelled it has said all there is."""
        if outcome == "cancelled" and not self.announced:
            return
        if self._notice is None:
            await self.ctx.events.settled(self.job, outcome, error)
            return
        await self._notice.before_outcome(announce=True)
        await self.ctx.events.settled(self.job, outcome, error, started_at=self._notice.at)

    async def _run_in_pool(self, input_path: Path | None, work_dir: Path | None) -> JobOutput:
        loop = asyncio.get_running_loop()

        def progress(
            media_s_done: float,
            media_s_total: float,
            phase: Phase | None = None,
            *,
            segment: TextSegment | None = None,
        ) -> None:
            self.lease.touch()
            if segment is not None:
                loop.call_soon_threadsafe(self._segment_event, segment)
            loop.call_soon_threadsafe(self._progress_event, media_s_done, media_s_total, phase)

        run = partial(self.ctx.processor.run, self.job, input_path, work_dir, progress, self.cancelled)
        self._reached(None)
        return await loop.run_in_executor(self.ctx.pool, run)

    def _reached(self, stage: str | None) -> None:
        """Move this job's count in the context to `stage` (None: it is no
        longer on its way to the processor)."""
        if self._counted_as is not None:
            setattr(self.ctx, self._counted_as, getattr(self.ctx, self._counted_as) - 1)
        if stage is not None:
            setattr(self.ctx, stage, getattr(self.ctx, stage) + 1)
        self._counted_as = stage

    async def _stage_owner_files(self, files: tuple[OwnerFile, ...], work_dir: Path) -> None:
        """Objects of the job owner's bucket the processor asked for (a
        cookie file, say) into the job's private dir (mkdtemp: mode 0700),
        deleted with it; their contents are never logged. One the owner
        never stored is simply absent."""
        bucket = names.files_bucket(self.job.owner)
        for f in files:
            try:
                await objects.read_to_file(self.ctx.js, bucket, f.object_name, work_dir / f.filename)
            except NotFound:
                continue

    async def _fetch_input(self, work_dir: Path) -> Path | None:
        job, staged = self.job, self.job.input
        if staged is None:
            return None
        dest = work_dir / staged.filename
        try:
            await retrying(
                lambda: objects.read_to_file(
                    self.ctx.js, staged.bucket, staged.object_name, dest, expected_sha256_hex=staged.sha256
                ),
                what=f"read the input of {job.job_id}",
                give_up_after_s=self.ctx.bus_retry_s,
            )
        except NotFound:
            raise JobFailed(INPUT_MISSING, "the staged input is gone (expired or deleted)") from None
        except objects.DigestMismatch as e:
            raise JobFailed(INPUT_CORRUPT, str(e)) from e
        return dest

    async def _store_result(self, output: JobOutput) -> None:
        """Result first, then the event, then (in `settle`) the ack: a node
        dying anywhere in between leaves the job redeliverable, never lost.
        A small result is stored by the event itself (it rides inside it)."""
        job, ctx = self.job, self.ctx
        text = output.result.model_dump_json()
        data = text.encode()
        where: dict[str, str]
        if len(data) <= ctx.inline_result_max:  # bytes: the stream's cap is in bytes
            where = {"result_inline": text}
        else:
            name = names.result_object(job.job_id, job.attempt)
            await retrying(
                lambda: objects.put_bytes(ctx.js, names.files_bucket(job.owner), name, data),
                what=f"store the result of {job.job_id}",
                give_up_after_s=ctx.bus_retry_s,
            )
            where = {"result_object": name}
        s = output.summary
        ctx.metrics.media_seconds.inc(s.duration_s)
        ctx.metrics.processing_seconds.inc(s.processing_s)
        if s.pages:
            ctx.metrics.pages_done(job.kind, s.pages)
        if s.real_time_factor is not None:
            ctx.metrics.rtf.observe(s.real_time_factor)
        for stage in s.stages:
            ctx.metrics.stage_done(stage.name, stage.engine, stage.processing_s, stage.media_s)
        notice = self._notice
        assert notice is not None  # a result exists only after the engine ran it
        await notice.before_outcome(announce=False)
        await ctx.events.finished(job, EventType.SUCCEEDED, summary=s, started_at=notice.at, **where)

    def _progress_event(self, done_s: float, total_s: float, phase: Phase | None = None) -> None:
        """At most one progress event per PROGRESS_EVERY_S, but always the
        first of a new phase and the last one (all done: a 3-page PDF
        converted in 0.2 s still says 3 of 3); none once cancelled."""
        t = time.monotonic()
        name = phase.name if phase is not None else None
        new_phase = name != self._phase
        last = total_s > 0 and done_s >= total_s
        if (t - self._last_progress_event < PROGRESS_EVERY_S and not (new_phase or last)) or self.cancelled.is_set():
            return
        self._announce_now()
        self._last_progress_event, self._phase = t, name
        fraction = (phase or ONE_PHASE).fraction(done_s, total_s)
        if self._pages:
            self.ctx.events.progress(self.job, fraction, pages_done=int(done_s), pages_total=int(total_s), phase=name)
        else:
            self.ctx.events.progress(self.job, fraction, media_s_done=done_s, phase=name)

    def _segment_event(self, segment: TextSegment) -> None:
        """Every finished segment, unthrottled (each is a piece of the text
        a client is watching grow), none once cancelled."""
        if not self.cancelled.is_set():
            self._announce_now()
            self.ctx.events.segment(self.job, segment)

    def _announce_now(self) -> None:
        """A run that shows progress or text is announced first, so watchers
        see `started` before what it did."""
        if self._notice is not None:
            self._notice.now()

    async def _keep_lease(self) -> None:
        """Extend the ack deadline every ack_wait/3 while the job shows life."""
        every = self.ctx.ack_wait_s / 3
        warned = False
        while True:
            await asyncio.sleep(every)
            if self.lease.healthy():
                try:
                    await self.msg.in_progress()
                except Exception as e:
                    log.warning("in_progress for %s failed: %s", self.job.job_id, e)
            elif not warned:
                warned = True
                log.error(
                    "job %s made no progress for %.0fs; letting its lease expire so it falls back",
                    self.job.job_id,
                    self.ctx.job_deadline_s,
                )
