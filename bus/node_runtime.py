"""The node runtime: the node's life, its pull loop, slots and registry entry.

One class owns the node's life: `start()`, `stop(drain_timeout_s)`, `close()`.
It decides *when* a job runs (a free slot, a fetched message, no stop
requested) and keeps the node visible (registry heartbeat) and reachable
(cancel subscription). *How* one job runs is `bus/job_run.py`; what the node
reports is `bus/job_events.py`. The event loop only moves bytes and
messages; processors run in a thread pool sized to capacity, so lease
extensions (`in_progress`), heartbeats and acks keep flowing while a model
works. With `prefetch`, the node takes that many jobs more than its
capacity: they fetch and prepare (decode) their inputs while the engine is
busy and wait for an engine slot (bus/job_run.py), so a fast GPU engine is
not idle while the next input is read from the object store and decoded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from bus import connection, node_permissions, registry, start_claims
from bus.engine_slots import EngineSlots
from bus.intake import Intake, own_waiting, pool_waiting
from bus.job_events import EventReporter
from bus.job_run import BAD_MESSAGE_ERRORS, JobContext, JobRun, read_job
from bus.metrics import NodeMetrics
from bus.pulling import Puller
from bus.retry import retrying
from bus.sealing import RecordSeal
from bus.task_cancel import cancel_and_wait
from schemas import names
from schemas.events import INLINE_RESULT_MAX
from schemas.jobs import JobMessage, now
from schemas.names import Lane
from schemas.nodes import NodeHeartbeat
from schemas.processing import Advertises, Gathers, Processor

log = logging.getLogger("gpubus.bus.node")

FETCH_WAIT_S = 2.0
CANCEL_MEMORY_S = 300.0


def new_node_id(lane: Lane) -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:24].strip("-") or "node"
    return f"{lane}-{host}-{uuid.uuid4().hex[:6]}"


class SlotHold:
    """The slot one fetched message holds, given back once: when its job's
    outcome is stored (bus/job_run.JobRun), or else when its task ends."""

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots: asyncio.Semaphore | None = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


class NodeRuntime:
    """Pulls one consumer with `capacity` slots; counters in `__repr__`."""

    def __init__(
        self,
        nc: NatsClient,
        processor: Processor,
        *,
        queue_owner: str,
        lane: Lane,
        capacity: int,
        job_deadline_s: float,
        metrics: NodeMetrics,
        node_id: str | None = None,
        metrics_url: str | None = None,
        handle_signals: bool = True,
        drain_timeout_s: float = 30.0,
        connection_lost: asyncio.Event | None = None,
        bus_retry_s: float = 10.0,
        js_api_prefix: str = node_permissions.JS_API,
        job_seal: RecordSeal | None = None,
        inline_result_max: int = INLINE_RESULT_MAX,
        prefetch: int = 0,
    ) -> None:
        self.nc = nc
        # A user node reaches JetStream from its own account through imports
        # under another prefix (bus/node_permissions.py); the bootstrap answer names it.
        self.js = nc.jetstream(prefix=js_api_prefix)
        self._puller = Puller(
            nc, stream=names.JOBS_STREAM, durable=names.consumer_name(queue_owner, lane), api_prefix=js_api_prefix
        )
        # Which of the lane's queues the next job comes from: priorities, and
        # on the shared pool a turn for each owner (bus/intake.py).
        waiting = pool_waiting(self.js, lane) if queue_owner == names.SHARED else own_waiting(queue_owner, lane)
        self._intake = Intake(self._puller, queue_owner, lane, waiting)
        # The idle node's open pull (bus/intake.py), on an inbox of its own:
        # its answer, a job or a 408 at any time, must not end another take.
        self._open_puller = Puller(
            nc, stream=names.JOBS_STREAM, durable=names.consumer_name(queue_owner, lane), api_prefix=js_api_prefix
        )
        self._open: asyncio.Task[None] | None = None
        self._open_refused_at = -math.inf
        self.processor = processor
        self.queue_owner = queue_owner
        self.lane = lane
        self.capacity = capacity
        self.prefetch = prefetch  # jobs taken ahead of the engine, staged and prepared while it works
        self.metrics = metrics
        self.node_id = node_id or new_node_id(lane)
        self.metrics_url = metrics_url
        self._handle_signals = handle_signals
        self.drain_timeout_s = drain_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=capacity + prefetch, thread_name_prefix=f"gpubus-{lane}")
        self._jobs = JobContext(  # what every job of this node shares (bus/job_run.py)
            js=self.js,
            processor=processor,
            pool=self._pool,
            metrics=metrics,
            queue_owner=queue_owner,
            lane=lane,
            node_id=self.node_id,
            job_deadline_s=job_deadline_s,
            bus_retry_s=bus_retry_s,
            job_seal=job_seal,
            inline_result_max=inline_result_max,
            engine=EngineSlots(capacity),
            events=EventReporter(nc, self.js, lane=lane, node_id=self.node_id, bus_retry_s=bus_retry_s),
            start_gate=self._claim_start if lane is Lane.GPU else None,
        )
        if isinstance(processor, Gathers):
            processor.expect_from(self._jobs.coming)  # a gathering waits for the jobs on their way
        self._cancelled_early: dict[str, float] = {}
        self._slots = asyncio.Semaphore(capacity + prefetch)
        self._inflight: dict[str, JobRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started_at = now()
        self._heartbeat_s = 3.0
        self._nodes_kv: KeyValue | None = None
        self.done = 0
        self.failed = 0
        self.stopped = asyncio.Event()
        # Set by whoever opened `nc` when NATS closes it for good (a revoked key).
        self.connection_lost = connection_lost or asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<NodeRuntime {self.node_id} {names.consumer_name(self.queue_owner, self.lane)} "
            f"in_flight={len(self._inflight)}/{self.capacity} done={self.done} failed={self.failed}>"
        )

    # -- life ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the node: learn the consumer's terms and the registry's TTL,
        listen for cancels, announce ourselves, then start pulling."""
        consumer = names.consumer_name(self.queue_owner, self.lane)
        info = await self.js.consumer_info(names.JOBS_STREAM, consumer)
        self._jobs.ack_wait_s = float(info.config.ack_wait or 30.0)
        self._jobs.max_deliver = int(info.config.max_deliver or -1)
        self._nodes_kv = nodes_kv = await self.js.key_value(names.NODES_BUCKET)
        ttl = (await nodes_kv.status()).ttl or 10.0
        self._heartbeat_s = max(0.2, ttl / 3)
        cancel_owner = "*" if self.queue_owner == names.SHARED else self.queue_owner
        await self.nc.subscribe(names.cancel_subject(cancel_owner), cb=self._on_cancel)
        await self.nc.subscribe(names.queued_filter(self.queue_owner, self.lane), cb=self._intake.on_doorbell)
        await self._intake.find_high(self.js)
        self.metrics.capacity.set(self.capacity)
        await self._heartbeat()
        await self._puller.open()
        await self._open_puller.open()
        self._background = [
            asyncio.create_task(self._pull_loop(), name="fetch"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        log.info(
            "node %s pulling %s (ack_wait=%.1fs, capacity=%d, device=%s)",
            self.node_id,
            consumer,
            self._jobs.ack_wait_s,
            self.capacity,
            self.processor.device,
        )

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Shutdown in a fixed order:
        1. stop fetching, so no new job is taken;
        2. let in-flight jobs finish while the connection is still up, so
           their results, events and acks get out;
        3. whatever is still running past the grace period is interrupted and
           nak'ed, so JetStream redelivers it at once to another node;
        4. leave the registry (close() then closes the connection)."""
        if self._stopping.is_set():
            await self.stopped.wait()
            return
        self._stopping.set()
        self._intake.wake.set()  # an idle pull loop stops waiting for work
        if drain_timeout_s is None:
            drain_timeout_s = self.drain_timeout_s
        log.info("node %s stopping: %d in flight, grace %.0fs", self.node_id, len(self._tasks), drain_timeout_s)
        if self._open is not None:  # a job it brings is run with the others: it was asked for with a slot
            await asyncio.gather(self._open, return_exceptions=True)
        await self._drain_jobs(drain_timeout_s)
        await self._stop_background()
        try:
            if not self.nc.is_closed and self._nodes_kv is not None:
                await registry.forget(self._nodes_kv, self.queue_owner, self.lane, self.node_id)
        except Exception as e:
            log.warning("could not leave the registry: %s", e)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()

    async def _drain_jobs(self, grace_s: float) -> None:
        """Steps 2 and 3 of `stop`: wait, then cancel the tasks first (settle
        naks them), then free their threads."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
        for task in list(self._tasks.values()):
            task.cancel()
        for run in self._inflight.values():
            run.cancelled.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)

    async def _stop_background(self) -> None:
        fetch = self._background[0] if self._background else None
        if fetch:
            # A take in progress ends at once (its messages, if any, are
            # nak'ed); a loop waiting for a free slot or for work has no
            # pull request out, so cancelling it loses nothing.
            await asyncio.wait([fetch], timeout=FETCH_WAIT_S + 1)
        await asyncio.gather(*(cancel_and_wait(task) for task in self._background))
        await self._puller.close()
        await self._open_puller.close()

    async def close(self) -> None:
        await self.stop()
        await connection.close(self.nc)

    # -- pulling -------------------------------------------------------------

    async def _pull_loop(self) -> None:
        """Never fetch more than free slots: wait for one free slot, then
        take what waits, up to the slots free right now, in the order the
        intake decides (bus/intake.py); each job starts as it comes. With
        nothing waiting, sleep until a doorbell rings or FETCH_WAIT_S, an
        owner's node with a pull open meanwhile (`_open_pull`)."""
        while not self._stopping.is_set():
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            free = 1 + await self._free_slots()
            launched = 0

            async def launch(msg: Msg) -> None:
                nonlocal launched
                launched += 1  # holds one of the slots taken (released when it ends)
                await self._launch(msg)

            failed = False
            try:
                await self._intake.take(free, launch)
            except Exception as e:  # disconnected, NATS away: keep trying
                log.warning("fetch failed: %s", e)
                failed = True
            for _ in range(free - launched):
                self._slots.release()
            if failed:
                await asyncio.sleep(0.5)
            elif not launched:
                await self._idle()

    async def _idle(self) -> None:
        """Nothing waits: until a doorbell rings, the open pull brings a
        job, or FETCH_WAIT_S (a reconcile is then due)."""
        await self._open_pull()
        await self._intake.wait(FETCH_WAIT_S, self._open)

    async def _open_pull(self) -> None:
        """Open a pull on the intake's open queue (bus/intake.py) with a
        slot of its own, so the job it brings starts at once: a delivered
        message starts its ack_wait, and a node never holds one it cannot
        start. Only while another slot is free too, so a doorbell of
        another queue still finds one."""
        queue = self._intake.open_queue()
        if queue is None or self._open is not None or self._stopping.is_set() or self._slots.locked():
            return
        if time.monotonic() - self._open_refused_at < FETCH_WAIT_S:  # refused: not again at once
            return
        await self._slots.acquire()  # returns at once while not locked
        if self._slots.locked():  # that was the last free slot
            self._slots.release()
            return
        self._open = asyncio.create_task(self._pull_open(queue.consumer), name="open-pull")

    async def _pull_open(self, consumer: str) -> None:
        """The open pull's life: the job it brings runs on the slot taken
        for it, even once the node is stopping (`stop` waits for this and
        drains the job with the others); with no job the slot goes back."""
        try:
            msg = await self._open_puller.next_message(FETCH_WAIT_S, consumer)
        except Exception as e:  # 503 (a queue gone, its server down), disconnected: doorbells still work
            log.warning("open pull on %s failed: %s", consumer, e)
            self._open_refused_at = time.monotonic()
            msg = None
        finally:
            self._open = None
        if msg is None:
            self._slots.release()
        else:
            self._start(msg)

    async def _launch(self, msg: Msg) -> None:
        """Start one taken message, or hand it back if the node is stopping."""
        if self._stopping.is_set():
            await msg.nak()  # fetched but not started: hand it back now
            self._slots.release()
            return
        self._start(msg)

    def _start(self, msg: Msg) -> None:
        """Run one fetched message as a task holding the slot it was fetched with."""
        key = f"{msg.metadata.sequence.stream}"
        hold = SlotHold(self._slots)
        task = asyncio.create_task(self._run_message(msg, hold.release), name=f"job-{key}")
        self._tasks[key] = task
        task.add_done_callback(partial(self._finished, key, hold))

    async def _free_slots(self) -> int:
        """Takes every slot free right now (at once: none is waited for)."""
        free = 0
        while not self._slots.locked():
            await self._slots.acquire()  # returns at once while not locked
            free += 1
        return free

    def _finished(self, key: str, hold: SlotHold, _task: asyncio.Task[None] | None = None) -> None:
        self._tasks.pop(key, None)
        hold.release()

    async def _run_message(self, msg: Msg, free_slot: Callable[[], None]) -> None:
        """Refuse what is not a job of our queue; run the rest, visible to
        cancels (`_inflight`) while it runs (and until its ack is confirmed:
        `stop` waits for that, though its slot is free once the outcome is
        stored)."""
        try:
            job = read_job(self._jobs, msg)
        except BAD_MESSAGE_ERRORS as e:
            self.metrics.bad_messages.inc()
            log.error("terming bad job message on %s (seq %s): %s", msg.subject, msg.metadata.sequence.stream, e)
            await msg.term()
            return
        early = self._cancelled_early.pop(job.job_id, None) is not None
        run = JobRun(self._jobs, job, msg, cancelled_already=early, free_slot=free_slot)
        self._inflight[job.job_id] = run
        try:
            await run.execute()
        finally:
            self._inflight.pop(job.job_id, None)
            self.done += run.succeeded
            self.failed += not (run.succeeded or run.start_lost)

    async def _claim_start(self, job: JobMessage, msg: Msg) -> bool:
        """A GPU attempt races the gateway's start-deadline mover for the
        job (bus/start_claims.py). Lost: no work, and the message is left
        unsettled (the mover deletes it; should the mover have died half
        way, its ack_wait sends it to the CPU lane). A claim that cannot be
        made at all hands the message back."""
        try:
            ok = await retrying(
                lambda: start_claims.node_may_start(
                    self.js, job.owner, job.job_id, job.attempt, msg.metadata.num_delivered
                ),
                what=f"claim the start of {job.job_id}",
                give_up_after_s=self._jobs.bus_retry_s,
            )
        except Exception as e:
            log.warning("job %s: start not claimed (%s); handing it back", job.job_id, e)
            await msg.nak(delay=1.0)
            return False
        if not ok:
            log.info("job %s attempt %d moved to the CPU lane before it started here", job.job_id, job.attempt)
        return ok

    # -- cancels -------------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        """Stop a running job; remember a cancel for a job not seen yet, in
        case it was fetched just before the gateway deleted it."""
        job_id = msg.data.decode(errors="replace")[:64]
        run = self._inflight.get(job_id)
        if run:
            log.info("job %s cancel requested; stopping it", job_id)
            run.cancelled.set()
            return
        t = time.monotonic()
        self._cancelled_early = {j: at for j, at in self._cancelled_early.items() if t - at < CANCEL_MEMORY_S}
        self._cancelled_early[job_id] = t

    # -- registry ------------------------------------------------------------

    async def _heartbeat(self) -> None:
        assert self._nodes_kv is not None  # opened in start(), before the first beat
        await registry.beat(
            self._nodes_kv,
            NodeHeartbeat(
                node_id=self.node_id,
                owner=self.queue_owner,
                lane=self.lane,
                device=self.processor.device,
                kinds=sorted(self.processor.kinds),
                models=self.processor.models,
                features=self.processor.features if isinstance(self.processor, Advertises) else {},
                capacity=self.capacity,
                busy=min(len(self._inflight), self.capacity),  # prefetched jobs wait, they do not run
                last_seen=now(),
                started_at=self._started_at,
                metrics_url=self.metrics_url,
                jobs_done=self.done,
            ),
        )

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._heartbeat()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
