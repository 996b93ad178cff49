"""The node runtime: pull jobs, run them in worker threads, report, settle.

One class owns the node's life: `start()`, `stop(drain_timeout_s)`, `close()`.
The event loop only moves bytes and messages; the processor runs in a thread
pool sized to capacity, so lease extensions (`in_progress`), heartbeats and
acks keep flowing while a model works.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bus import connection, node_permissions, objects, registry, sealing
from bus.acking import settle
from bus.joblog import job_fields
from bus.metrics import NodeMetrics
from bus.pulling import next_batch, take_available
from bus.retry import retrying
from bus.sealing import RecordSeal
from schemas import codec, names
from schemas.errors import INPUT_CORRUPT, INPUT_MISSING, Forbidden, JobCancelled, JobFailed, NotFound
from schemas.events import EventType, JobEvent
from schemas.jobs import ErrorInfo, JobMessage, now
from schemas.names import Kind, Lane
from schemas.nodes import NodeHeartbeat
from schemas.processing import JobOutput, Processor, cookies_path

log = logging.getLogger("gpubus.bus.node")

FETCH_WAIT_S = 2.0
PROGRESS_EVERY_S = 0.3
CANCEL_MEMORY_S = 300.0


def _log_failed_publish(fut: asyncio.Future, job_id: str, type_: EventType) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("job %s: %s event not stored: %s", job_id, type_, fut.exception())


def new_node_id(lane: Lane) -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:24].strip("-") or "node"
    return f"{lane}-{host}-{uuid.uuid4().hex[:6]}"


def _make_work_dir(job_id: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"gpubus-{job_id}-"))


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
class InFlight:
    job: JobMessage
    msg: Msg
    lease: Lease
    cancelled: threading.Event = field(default_factory=threading.Event)
    last_progress_event: float = 0.0


class NodeRuntime:
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
    ) -> None:
        self.nc = nc
        # A user node reaches JetStream from its own account through imports
        # under another prefix (bus/node_permissions.py); the bootstrap answer names it.
        self.js = nc.jetstream(prefix=js_api_prefix)
        # The trusted shared-pool node holds the gateways' seal and checks
        # every job message against it; a user's node cannot (it never holds
        # the secret) and relies on its account wall and _check_queue.
        self._job_seal = job_seal
        self.processor = processor
        self.queue_owner = queue_owner
        self.lane = lane
        self.capacity = capacity
        self.job_deadline_s = job_deadline_s
        self.metrics = metrics
        self.node_id = node_id or new_node_id(lane)
        self.metrics_url = metrics_url
        self._handle_signals = handle_signals
        self.drain_timeout_s = drain_timeout_s
        # How long each NATS step of a job (input, result, events) is retried
        # through a leader election or a reconnect before the job is nak'ed:
        # a finished transcript lost to seconds of failover is a job redone.
        self.bus_retry_s = bus_retry_s
        self._cancelled_early: dict[str, float] = {}
        self._slots = asyncio.Semaphore(capacity)
        self._pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix=f"gpubus-{lane}")
        self._inflight: dict[str, InFlight] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._background: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._started_at = now()
        self._ack_wait_s = 30.0
        self._max_deliver = -1
        self._heartbeat_s = 3.0
        self._nodes_kv = None
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
        consumer = names.consumer_name(self.queue_owner, self.lane)
        psub = await self.js.pull_subscribe_bind(durable=consumer, stream=names.JOBS_STREAM)
        info = await psub.consumer_info()
        self._ack_wait_s = float(info.config.ack_wait or 30.0)
        self._max_deliver = int(info.config.max_deliver or -1)
        self._nodes_kv = await self.js.key_value(names.NODES_BUCKET)
        ttl = (await self._nodes_kv.status()).ttl or 10.0
        self._heartbeat_s = max(0.2, ttl / 3)
        cancel_owner = "*" if self.queue_owner == names.SHARED else self.queue_owner
        await self.nc.subscribe(names.cancel_subject(cancel_owner), cb=self._on_cancel)
        self.metrics.capacity.set(self.capacity)
        await self._beat()
        self._background = [
            asyncio.create_task(self._fetch_loop(psub), name="fetch"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
        log.info(
            "node %s pulling %s (ack_wait=%.1fs, capacity=%d, device=%s)",
            self.node_id, consumer, self._ack_wait_s, self.capacity, self.processor.device,
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
        if drain_timeout_s is None:
            drain_timeout_s = self.drain_timeout_s
        log.info("node %s stopping: %d in flight, grace %.0fs", self.node_id, len(self._tasks), drain_timeout_s)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=drain_timeout_s)
        # Cancel the tasks first (settle naks them), then free their threads.
        for task in list(self._tasks.values()):
            task.cancel()
        for inflight in self._inflight.values():
            inflight.cancelled.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=5)
        fetch = self._background[0] if self._background else None
        if fetch:
            # A fetch in progress ends within FETCH_WAIT_S (its message, if
            # any, is nak'ed); a loop waiting for a free slot has no pull
            # request out, so cancelling it loses nothing.
            await asyncio.wait([fetch], timeout=FETCH_WAIT_S + 1)
            fetch.cancel()
        for task in self._background[1:]:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            if not self.nc.is_closed:
                await registry.forget(self._nodes_kv, self.queue_owner, self.lane, self.node_id)
        except Exception as e:
            log.warning("could not leave the registry: %s", e)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()

    async def close(self) -> None:
        await self.stop()
        await connection.close(self.nc)

    # -- pulling -------------------------------------------------------------

    async def _fetch_loop(self, psub) -> None:
        """Never fetch more than free slots: wait for one message holding one
        slot, then take what else is already queued, up to the slots free
        right now, in one request (one pull round trip per job capped a
        busy node's intake)."""
        while not self._stopping.is_set():
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            try:
                msgs = await next_batch(psub, max_batch=1, wait_s=FETCH_WAIT_S)
            except Exception as e:  # disconnected, consumer gone: keep trying
                self._slots.release()
                log.warning("fetch failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                self._slots.release()
                continue
            await self._start(msgs[0])  # runs while the pull for more is out
            for msg in await self._take_more(psub):
                await self._start(msg)

    async def _start(self, msg: Msg) -> None:
        """Run one fetched message as a task holding the slot it was fetched with."""
        if self._stopping.is_set():
            await msg.nak()  # fetched but not started: hand it back now
            self._slots.release()
            return
        key = f"{msg.metadata.sequence.stream}"
        task = asyncio.create_task(self._handle(msg), name=f"job-{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _t, k=key: self._finished(k))

    async def _take_more(self, psub) -> list[Msg]:
        """Messages already waiting, one per slot that is free right now;
        the slots taken but not filled are given back."""
        free = 0
        while not self._slots.locked():
            await self._slots.acquire()  # returns at once while not locked
            free += 1
        more: list[Msg] = []
        try:
            if free:
                more = await take_available(psub, free)
        except Exception as e:  # the message in hand still runs
            log.warning("fetch of more messages failed: %s", e)
        for _ in range(free - len(more)):
            self._slots.release()
        return more

    def _finished(self, key: str) -> None:
        self._tasks.pop(key, None)
        self._slots.release()

    async def _on_cancel(self, msg: Msg) -> None:
        """Stop a running job; remember a cancel for a job not seen yet, in
        case it was fetched just before the gateway deleted it."""
        job_id = msg.data.decode(errors="replace")[:64]
        inflight = self._inflight.get(job_id)
        if inflight:
            log.info("job %s cancel requested; stopping it", job_id)
            inflight.cancelled.set()
            return
        t = time.monotonic()
        self._cancelled_early = {j: at for j, at in self._cancelled_early.items() if t - at < CANCEL_MEMORY_S}
        self._cancelled_early[job_id] = t

    # -- one job -------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        try:
            if self._job_seal is not None:
                self._job_seal.check(msg.subject, msg.data, (msg.headers or {}).get(sealing.HEADER))
            job = codec.decode(msg.data, JobMessage)
            self._check_queue(job)
        except (codec.DecodeError, Forbidden, sealing.SealBroken) as e:
            self.metrics.bad_messages.inc()
            log.error("terming bad job message on %s (seq %s): %s", msg.subject, msg.metadata.sequence.stream, e)
            await msg.term()
            return
        inflight = InFlight(job=job, msg=msg, lease=Lease(self.job_deadline_s))
        if self._cancelled_early.pop(job.job_id, None) is not None:
            inflight.cancelled.set()
        self._inflight[job.job_id] = inflight
        self.metrics.in_flight.inc()
        ref = f"{job.job_id} owner={job.owner} lane={self.lane} node={self.node_id} attempt={job.attempt}"
        keepalive = asyncio.create_task(self._keep_lease(inflight), name=f"lease-{job.job_id}")
        started = time.monotonic()
        status = "failed"
        try:
            last = self._max_deliver > 0 and msg.metadata.num_delivered >= self._max_deliver
            async with settle(msg, lambda kind, err: self._report(job, kind, err), job_ref=ref, last_delivery=last):
                await self._announce(job, EventType.STARTED)
                log.info("job %s started", ref, extra=self._log_fields(job, "started"))
                output = await self._run(inflight)
                await self._store_result(job, output)
                status = "succeeded"
        finally:
            keepalive.cancel()
            self._inflight.pop(job.job_id, None)
            self.metrics.in_flight.dec()
            self.metrics.job_done(status)
            self.done += status == "succeeded"
            self.failed += status != "succeeded"
            elapsed = time.monotonic() - started
            log.info("job %s %s in %.2fs", ref, status, elapsed, extra=self._log_fields(job, status, elapsed_s=elapsed))

    def _log_fields(self, job: JobMessage, state: str, **more) -> dict:
        return job_fields(job.job_id, job.owner, self.lane, self.node_id, state, attempt=job.attempt, **more)

    def _check_queue(self, job: JobMessage) -> None:
        """A message on our consumer must belong to our queue; anything else
        was forged onto a subject and is refused, not processed."""
        if job.queue_owner != self.queue_owner or job.lane != self.lane:
            raise Forbidden(f"job for {job.queue_owner}/{job.lane} on {self.queue_owner}/{self.lane}")
        if self.queue_owner != names.SHARED and job.owner != self.queue_owner:
            raise Forbidden(f"job of {job.owner} on {self.queue_owner}'s queue")
        if job.input is not None and not names.is_input_of(job.owner, job.job_id, job.input.bucket, job.input.object_name):
            # Even a trusted node reads only the job owner's staged file: a
            # job naming another bucket would turn it into a copying machine.
            raise Forbidden(f"job {job.job_id}'s input {job.input.bucket}/{job.input.object_name} is not its own")

    async def _run(self, inflight: InFlight) -> JobOutput:
        """The work directory is made and removed on a pool thread, never on
        the event loop: under disk load a mkdir or rmdir blocks for
        milliseconds, and the loop carries every other job's acks and
        events. A job with nothing to fetch gets no directory at all."""
        job = inflight.job
        if inflight.cancelled.is_set():
            raise JobCancelled()
        loop = asyncio.get_running_loop()

        def progress(done_s: float, total_s: float) -> None:
            inflight.lease.touch()
            loop.call_soon_threadsafe(self._progress_event, inflight, done_s, total_s)

        if job.input is None and job.kind is not Kind.URL:  # nothing to fetch (URL jobs fetch cookies)
            output = await loop.run_in_executor(
                self._pool, self.processor.run, job, None, None, progress, inflight.cancelled
            )
        else:
            work_dir = await loop.run_in_executor(self._pool, _make_work_dir, job.job_id)
            try:
                input_path = await self._fetch_input(job, work_dir)
                output = await loop.run_in_executor(
                    self._pool, self.processor.run, job, input_path, work_dir, progress, inflight.cancelled
                )
            finally:
                await loop.run_in_executor(self._pool, shutil.rmtree, work_dir, True)
        if inflight.cancelled.is_set():
            raise JobCancelled()
        return output

    async def _fetch_input(self, job: JobMessage, work_dir: Path) -> Path | None:
        if job.kind is Kind.URL:
            await self._fetch_cookies(job, work_dir)
        if job.input is None:
            return None
        dest = work_dir / job.input.filename
        try:
            await retrying(
                lambda: objects.read_to_file(
                    self.js, job.input.bucket, job.input.object_name, dest, expected_sha256_hex=job.input.sha256
                ),
                what=f"read the input of {job.job_id}", give_up_after_s=self.bus_retry_s,
            )
        except NotFound:
            raise JobFailed(INPUT_MISSING, "the staged input is gone (expired or deleted)") from None
        except objects.DigestMismatch as e:
            raise JobFailed(INPUT_CORRUPT, str(e)) from e
        return dest

    async def _fetch_cookies(self, job: JobMessage, work_dir: Path) -> None:
        """The owner's cookie file (if any) into the job's private temp dir
        (mkdtemp: mode 0700), deleted with it; its contents are never logged."""
        try:
            await objects.read_to_file(
                self.js, names.files_bucket(job.owner), names.COOKIES_OBJECT, cookies_path(work_dir)
            )
        except NotFound:
            return

    async def _store_result(self, job: JobMessage, output: JobOutput) -> None:
        """Result first, then the event, then (in `settle`) the ack: a node
        dying anywhere in between leaves the job redeliverable, never lost."""
        name = names.result_object(job.job_id, job.attempt)
        data = output.result.model_dump_json().encode()
        await retrying(
            lambda: objects.put_bytes(self.js, names.files_bucket(job.owner), name, data),
            what=f"store the result of {job.job_id}", give_up_after_s=self.bus_retry_s,
        )
        s = output.summary
        self.metrics.media_seconds.inc(s.duration_s)
        self.metrics.processing_seconds.inc(s.processing_s)
        if s.real_time_factor is not None:
            self.metrics.rtf.observe(s.real_time_factor)
        await self._event(job, EventType.SUCCEEDED, result_object=name, summary=s)

    async def _keep_lease(self, inflight: InFlight) -> None:
        """Extend the ack deadline every ack_wait/3 while the job shows life."""
        every = self._ack_wait_s / 3
        warned = False
        while True:
            await asyncio.sleep(every)
            if inflight.lease.healthy():
                try:
                    await inflight.msg.in_progress()
                except Exception as e:
                    log.warning("in_progress for %s failed: %s", inflight.job.job_id, e)
            elif not warned:
                warned = True
                log.error(
                    "job %s made no progress for %.0fs; letting its lease expire so it falls back",
                    inflight.job.job_id, self.job_deadline_s,
                )

    # -- reporting -----------------------------------------------------------

    def _progress_event(self, inflight: InFlight, done_s: float, total_s: float) -> None:
        t = time.monotonic()
        if t - inflight.last_progress_event < PROGRESS_EVERY_S or inflight.cancelled.is_set():
            return
        inflight.last_progress_event = t
        frac = min(1.0, done_s / total_s) if total_s > 0 else None
        job = inflight.job
        ev = self._make_event(job, EventType.PROGRESS, progress=frac, media_s_done=done_s)
        # Progress is advisory: a core publish (no PubAck wait) into the stream.
        asyncio.ensure_future(self.nc.publish(names.event_subject(job.owner, job.job_id), codec.encode(ev)))

    def _make_event(self, job: JobMessage, type_: EventType, **fields) -> JobEvent:
        return JobEvent(
            type=type_, job_id=job.job_id, owner=job.owner, attempt=job.attempt,
            lane=self.lane, node_id=self.node_id, at=now(), **fields,
        )

    def _lifecycle_message(self, job: JobMessage, type_: EventType, **fields) -> tuple[str, bytes, dict[str, str]]:
        """Subject, payload and headers of a lifecycle event. It carries a
        Nats-Msg-Id per (job, attempt, type): a node redoing an attempt after
        a lost ack reports it once, so every attempt has exactly one terminal
        event in the stream."""
        ev = self._make_event(job, type_, **fields)
        headers = {"Nats-Msg-Id": names.event_msg_id(job.job_id, job.attempt, type_)}
        return names.event_subject(job.owner, job.job_id), codec.encode(ev), headers

    async def _event(self, job: JobMessage, type_: EventType, **fields) -> None:
        subject, payload, headers = self._lifecycle_message(job, type_, **fields)
        await retrying(
            lambda: self.js.publish(subject, payload, headers=headers),
            what=f"publish {type_} of {job.job_id}", give_up_after_s=self.bus_retry_s,
        )

    async def _announce(self, job: JobMessage, type_: EventType) -> None:
        """An advisory event (`started`) is sent without waiting for its
        PubAck: nothing depends on it being stored, and the wait (a disk
        sync on the server) was on every job's critical path. It still goes
        out before the outcome on the same connection, so it is stored
        first; a failure is logged."""
        subject, payload, headers = self._lifecycle_message(job, type_)
        fut = await self.js.publish_async(subject, payload, headers=headers)
        fut.add_done_callback(lambda f, ref=job.job_id: _log_failed_publish(f, ref, type_))

    async def _report(self, job: JobMessage, outcome: str, error: ErrorInfo | None) -> None:
        await self._event(job, EventType(outcome), error=error)

    # -- registry ------------------------------------------------------------

    async def _beat(self) -> None:
        await registry.beat(
            self._nodes_kv,
            NodeHeartbeat(
                node_id=self.node_id, owner=self.queue_owner, lane=self.lane,
                device=self.processor.device, kinds=sorted(self.processor.kinds),
                models=self.processor.models, capacity=self.capacity, busy=len(self._inflight),
                last_seen=now(), started_at=self._started_at, metrics_url=self.metrics_url, jobs_done=self.done,
            ),
        )

    async def _heartbeat_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(self._heartbeat_s)
            try:
                await self._beat()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
