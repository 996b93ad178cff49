"""Streams, consumers and buckets, created idempotently.

Every process calls these at start; two gateways starting at once both
succeed, because creating a thing that already exists with the same config is
a no-op in JetStream, and a changed config (say, a new ack_wait) is applied as
an update.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from bus.settings import Settings
from schemas import names
from schemas.events import INLINE_RESULT_MAX
from schemas.names import Lane, LaneQueue, Priority

log = logging.getLogger("gpubus.bus.topology")

DAY_S = 86_400.0
STREAM_NAME_IN_USE = 10058
CONSUMER_REPLICAS_EXCEED_STREAM = 10126
SCALE_UP_WAIT_S = 30.0
DUPLICATE_WINDOW_S = 120.0
# Two lane consumers per owner, more for the priorities and pool shares an
# owner uses (made when first used): room for well over 10,000 owners.
JOBS_MAX_CONSUMERS = 200_001
# Node events are a few hundred bytes, or a small result inline
# (schemas/events.INLINE_RESULT_MAX) plus its envelope; the cap keeps an
# untrusted node from storing megabytes per event (review F4: records of
# ~8 MB each). Records never hold the result, only where it is.
EVENT_MAX_BYTES = INLINE_RESULT_MAX + 64 * 1024
TIMERS_PENDING_MAX = 1_000_000  # TTL timers waiting at once
WEBHOOKS_PENDING_MAX = 1_000_000  # webhook deliveries waiting at once
WEBHOOK_MAX_BYTES = 256 * 1024  # a delivery carries one job record (a few KiB)
# A claim's body is `node` or `mover`, but the stream's limit counts headers
# too, and what a node publishes through its account's import reaches the
# stream with more of them: at 64 bytes the compose cluster refused every
# GPU node's claim (10054, "message size exceeds maximum allowed"), so each
# GPU job fell back to the CPU (tests/test_compose_stack.py).
CLAIM_MAX_BYTES = 1024
# The materializer and the fallback router nak only what may work later (a
# record not written yet, NATS away) and term the rest; this bound is the
# backstop, so no message is redelivered for ever whatever the code does
# (review F7). Ack_wait 30 s x 20 is ten minutes of a gateway side that
# cannot settle at all. A message past it stays in its stream (EVENTS keeps
# it for events_max_age_days, DEADLETTER likewise) for an operator to read.
INTERNAL_MAX_DELIVER = 20


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as e:
        if e.err_code != STREAM_NAME_IN_USE:
            raise
        log.info("stream %s exists with another config; updating", config.name)
        await js.update_stream(config)


async def _ensure_bucket(
    js: JetStreamContext,
    create: Callable[[], Awaitable[object]],
    stream: str,
    *,
    replicas: int,
    max_age_s: float | None,
    allow_msg_ttl: bool = False,
    allow_direct: bool = False,
) -> None:
    """KV buckets and object stores are streams that nats-py creates with a
    plain add, which the server refuses when the config changed (10058):
    raising GPUBUS_REPLICAS from 1 to 3 when a deployment grows to a cluster,
    or a new TTL, kept the gateway from starting. Apply the change instead.
    `allow_msg_ttl`: what nats-py 2.16 makes a KV bucket with (and not an
    object store: set on one, every later create would differ and update);
    `allow_direct`: what the bucket's config asks for, given to an older one."""
    try:
        await create()
    except BadRequestError as e:
        if e.err_code != STREAM_NAME_IN_USE:
            raise
        cfg = (await js.stream_info(stream)).config
        cfg.num_replicas = replicas
        if allow_msg_ttl:
            cfg.allow_msg_ttl = True
        if allow_direct:
            cfg.allow_direct = True
        if max_age_s:
            cfg.max_age = max_age_s
            cfg.duplicate_window = min(cfg.duplicate_window or max_age_s, max_age_s)
        log.info("bucket stream %s exists with another config; updating (replicas %d)", stream, replicas)
        await js.update_stream(cfg)


def _jobs_stream(s: Settings) -> StreamConfig:
    return StreamConfig(
        name=names.JOBS_STREAM,
        subjects=[names.JOBS_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW,
        # nats-server 2.15 caps a stream that names no limit at 1,000
        # consumers, and every owner has one per lane: owner 501 got
        # "maximum consumers limit reached" (python -m bench.owner_scale).
        max_consumers=JOBS_MAX_CONSUMERS,
        # Every stored job's headers again on `queued.<its subject after
        # jobs.>`: the doorbell nodes wait on (bus/intake.py), rung only once
        # the job is in the stream, so a pull it prompts finds it.
        republish=RePublish(src=names.JOBS_SUBJECTS, dest=names.QUEUED_SUBJECTS, headers_only=True),
    )


def _events_stream(s: Settings) -> StreamConfig:
    return StreamConfig(
        name=names.EVENTS_STREAM,
        subjects=[names.EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        # A small result lives in its `succeeded` event: it is kept as long
        # as a result in the owner's bucket would be.
        max_age=max(s.events_max_age_days, s.files_ttl_days) * DAY_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=EVENT_MAX_BYTES,
        # Inline results are read back by sequence (gateway/results.py).
        allow_direct=True,
    )


def _deadletter_stream(s: Settings) -> StreamConfig:
    """Captures MAX_DELIVERIES advisories so a fallback survives a gateway
    restart: core-NATS advisories would be gone if nobody listened."""
    return StreamConfig(
        name=names.DEADLETTER_STREAM,
        subjects=[names.MAX_DELIVERIES_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        max_age=s.events_max_age_days * DAY_S,
    )


def _starts_stream(s: Settings) -> StreamConfig:
    """Start claims (bus/start_claims.py): one tiny message per GPU attempt
    taken, kept as long as events are, well past any redelivery of it."""
    return StreamConfig(
        name=names.STARTS_STREAM,
        subjects=[names.STARTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        max_age=s.events_max_age_days * DAY_S,
        max_msg_size=CLAIM_MAX_BYTES,
    )


def _timers_stream(s: Settings) -> StreamConfig:
    """Job TTL timers (bus/job_ttl.py): one message per job with a TTL,
    gone once it fires. No max age: a timer may wait as long as a TTL may
    be, whatever the events' retention."""
    return StreamConfig(
        name=names.TIMERS_STREAM,
        subjects=[names.TIMERS_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
    )


def _timer_consumer(s: Settings) -> ConsumerConfig:
    """Naked with a delay until due, so no delivery bound: every pending
    timer is ack-pending, hence the large max_ack_pending."""
    return ConsumerConfig(
        durable_name=names.TTL_CONSUMER,
        filter_subject=names.TIMERS_SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=TIMERS_PENDING_MAX,
        num_replicas=s.replicas,
    )


def _webhooks_stream(s: Settings) -> StreamConfig:
    """Completion webhooks waiting for delivery (bus/webhook_delivery.py):
    one message per terminal state of a job with a webhook, gone once it
    is delivered or given up. Kept a day past the retry period, so a
    message is never removed while it may still be tried."""
    return StreamConfig(
        name=names.WEBHOOKS_STREAM,
        subjects=[names.WEBHOOKS_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        max_age=s.webhook_retry_for + DAY_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=WEBHOOK_MAX_BYTES,
    )


def _webhook_consumer(s: Settings) -> ConsumerConfig:
    """Naked with a growing delay between attempts, so like the TTL timers
    no delivery bound (the deliverer gives up by age) and a large
    max_ack_pending. Ack_wait covers one POST and its record update: a
    gateway killed mid-attempt hands the delivery to another soon."""
    return ConsumerConfig(
        durable_name=names.WEBHOOK_CONSUMER,
        filter_subject=names.WEBHOOKS_SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=2 * s.webhook_timeout + 5.0,
        max_deliver=-1,
        max_ack_pending=WEBHOOKS_PENDING_MAX,
        num_replicas=s.replicas,
    )


async def ensure_core(js: JetStreamContext, s: Settings) -> None:
    """What the gateway side needs before it serves a request."""
    streams = (_jobs_stream(s), _events_stream(s), _deadletter_stream(s), _starts_stream(s), _timers_stream(s))
    for cfg in (*streams, _webhooks_stream(s)):
        await ensure_stream(js, cfg)
    buckets = (
        (names.JOBS_BUCKET, None),
        (names.APIKEYS_BUCKET, None),
        (names.NODES_BUCKET, s.registry_ttl),
        (names.IDEMPOTENCY_BUCKET, s.idempotency_ttl),
    )
    for bucket, ttl in buckets:
        # Job listings read KV `jobs` with batched direct gets (bus/newest_records.py).
        direct = bucket == names.JOBS_BUCKET
        kv = KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=s.replicas, direct=direct or None)
        # A bucket made before nats-py 2.16 allowed no per-message TTLs (a
        # finished job's record has one: bus/jobstore.py): given them here,
        # and direct gets to one made before listings read with them.
        await _ensure_bucket(
            js,
            partial(js.create_key_value, kv),
            names.kv_stream(bucket),
            replicas=s.replicas,
            max_age_s=ttl,
            allow_msg_ttl=True,
            allow_direct=direct,
        )
    await _ensure_consumer(
        js, names.EVENTS_STREAM, _internal_consumer(names.MATERIALIZER_CONSUMER, names.EVENTS_SUBJECTS, s)
    )
    await _ensure_consumer(
        js, names.DEADLETTER_STREAM, _internal_consumer(names.FALLBACK_CONSUMER, names.MAX_DELIVERIES_SUBJECTS, s)
    )
    await _ensure_consumer(js, names.TIMERS_STREAM, _timer_consumer(s))
    await _ensure_consumer(js, names.WEBHOOKS_STREAM, _webhook_consumer(s))
    await ensure_lane(js, s, names.SHARED, Lane.CPU)


def _internal_consumer(durable: str, subject: str, s: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=30.0,
        max_deliver=INTERNAL_MAX_DELIVER,
        max_ack_pending=10_000,
        num_replicas=s.replicas,
    )


def lane_consumer_config(s: Settings, queue: LaneQueue) -> ConsumerConfig:
    """Retry policy is data on the server: the GPU lane gives a node
    `gpu_ack_wait` per lease and `gpu_max_deliver` tries before the
    MAX_DELIVERIES advisory sends the job to the CPU lane. Every priority
    and pool share of a lane has the same terms."""
    gpu = queue.lane is Lane.GPU
    return ConsumerConfig(
        durable_name=queue.consumer,
        filter_subject=queue.filter,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=s.gpu_ack_wait if gpu else s.cpu_ack_wait,
        max_deliver=s.gpu_max_deliver if gpu else s.cpu_max_deliver,
        max_ack_pending=1_000,
        num_replicas=s.replicas,
    )


async def _ensure_consumer(js: JetStreamContext, stream: str, cfg: ConsumerConfig) -> None:
    """A stream just scaled up (GPUBUS_REPLICAS raised) takes a moment to
    add its peers; until then the server refuses its consumers' new replica
    count (10126). Wait for it, within reason."""
    deadline = time.monotonic() + SCALE_UP_WAIT_S
    while True:
        try:
            await js.add_consumer(stream, cfg)
            return
        except BadRequestError as e:
            if e.err_code != CONSUMER_REPLICAS_EXCEED_STREAM or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def ensure_lane(js: JetStreamContext, s: Settings, queue_owner: str, lane: Lane) -> None:
    """A lane's normal-priority consumer (`cpu_shared`: the pool's consumer
    of the layout before shares). Made by an older version, its filter was
    the whole lane (`jobs.<owner>.<lane>.>`); this narrows it to the normal
    subjects in place, keeping what it has delivered and not yet acked."""
    await _ensure_consumer(js, names.JOBS_STREAM, lane_consumer_config(s, LaneQueue(queue_owner, lane)))


async def ensure_queue(js: JetStreamContext, s: Settings, queue: LaneQueue) -> None:
    """Any queue's consumer, made when its first job is published (high,
    low, pool shares) so owners pay only for the queues they use. A
    priority of an owner's own lane comes after the lane's normal consumer:
    until that is narrowed, the server refuses an overlapping filter (10100)."""
    if not queue.pool and queue.priority is not Priority.NORMAL:
        await ensure_lane(js, s, queue.queue_owner, queue.lane)
    await _ensure_consumer(js, names.JOBS_STREAM, lane_consumer_config(s, queue))


class QueueMaker:
    """`ensure_queue` once per queue and process: what a `JobPublisher`
    calls before each publish, so a job never lands where no consumer
    takes it. `made` records consumers made another way (an owner's)."""

    def __init__(self, js: JetStreamContext, s: Settings) -> None:
        self._js = js
        self._settings = s
        self._made: set[str] = set()

    def made(self, *consumers: str) -> None:
        self._made.update(consumers)

    async def __call__(self, queue: LaneQueue) -> None:
        if queue.consumer in self._made:
            return
        await ensure_queue(self._js, self._settings, queue)
        self._made.add(queue.consumer)


async def ensure_owner(js: JetStreamContext, s: Settings, owner: str) -> None:
    """An owner's consumers and file bucket; created by the trusted gateway
    side (at key creation, node bootstrap or first submit), never by nodes.
    The three requests are independent (a lane's normal consumer overlaps
    no other filter; the bucket is a stream of its own), so they go at once:
    a new user's first request waits one server round of stream and
    consumer creation, not three in a row (python -m bench.owner_scale)."""
    names.validate_owner(owner, allow_reserved=owner == names.ANONYMOUS)
    await asyncio.gather(ensure_files_bucket(js, s, owner), *(ensure_lane(js, s, owner, lane) for lane in Lane))


async def ensure_files_bucket(js: JetStreamContext, s: Settings, owner: str) -> None:
    """The owner's object store of staged inputs and results (a stream of its own)."""
    bucket, ttl = names.files_bucket(owner), s.files_ttl_days * DAY_S
    await _ensure_bucket(
        js,
        lambda: js.create_object_store(bucket, ttl=ttl, replicas=s.replicas, storage=StorageType.FILE),
        names.object_stream(bucket),
        replicas=s.replicas,
        max_age_s=ttl,
    )


def jobs_kv(js: JetStreamContext) -> KeyValue:
    """KV `jobs` read at its stream's leader. The bucket allows direct gets,
    which any replica answers, and a replica may not yet hold a record just
    written: a client reading its job right after the 202 must find it. So
    single records are read the way they were before listings needed direct
    gets; only listings (bus/newest_records.py) read from any replica."""
    bucket = names.JOBS_BUCKET
    return KeyValue(name=bucket, stream=names.kv_stream(bucket), pre=names.kv_subject(bucket, ""), js=js, direct=False)
