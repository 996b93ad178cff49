"""Every stream, consumer, bucket, subject and object name, in one place.

Operators type these names into the `nats` CLI, and nodes get NATS permissions
scoped to them, so they are part of the public contract: change them only with
a migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from schemas.errors import InvalidInput

OWNER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SHARED = "shared"
ANONYMOUS = "anonymous"
RESERVED_OWNERS = frozenset({SHARED, ANONYMOUS})

JOBS_STREAM = "JOBS"
EVENTS_STREAM = "EVENTS"
DEADLETTER_STREAM = "DEADLETTER"
TIMERS_STREAM = "TIMERS"  # job TTL timers (bus/job_ttl.py): trusted side only
STARTS_STREAM = "STARTS"  # start claims: who took a queued GPU attempt, a node or the mover (bus/start_claims.py)
WEBHOOKS_STREAM = "WEBHOOKS"  # completion webhooks waiting for delivery (bus/webhook_delivery.py): trusted side only
JOBS_BUCKET = "jobs"
APIKEYS_BUCKET = "apikeys"
NODES_BUCKET = "nodes"
IDEMPOTENCY_BUCKET = "idempotency"  # Idempotency-Key -> job id, with a TTL (gateway/idempotency.py): trusted side only
MATERIALIZER_CONSUMER = "materializer"
FALLBACK_CONSUMER = "fallback_router"
TTL_CONSUMER = "job_ttl"
WEBHOOK_CONSUMER = "webhooks"

JOBS_SUBJECTS = "jobs.>"
# JOBS republishes the headers of every stored job message here (the
# stream's `republish`), with the job subject after the prefix: the
# doorbell a node waits on, rung only once the job is stored.
QUEUED_PREFIX = "queued"
QUEUED_SUBJECTS = f"{QUEUED_PREFIX}.>"
EVENTS_SUBJECTS = "events.>"
STARTS_SUBJECTS = "starts.>"
TIMERS_SUBJECTS = "timers.>"
WEBHOOKS_SUBJECTS = "webhooks.>"
MAX_DELIVERIES_SUBJECTS = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.>"


class Lane(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


class Priority(StrEnum):
    """A job's priority. Within one owner's queues a node takes a waiting
    high job before normal before low; across the owners of the shared pool,
    round-robin comes first (bus/intake.py)."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_ORDER = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # the order a node takes them in


def priority_rank(priority: Priority) -> int:
    """0 for high: a lower rank is taken first."""
    return PRIORITY_ORDER.index(priority)


class Kind(StrEnum):
    """The built-in kinds. A job's kind is any string matching `KIND_PATTERN`
    (a processor package may add kinds, docs/WRITING_A_PROCESSOR.md), so
    fields typed `JobKind` hold plain strings; these members compare equal
    to them."""

    AUDIO = "audio"
    VIDEO = "video"
    URL = "url"
    NOOP = "noop"  # benchmarks only: measures the bus, not the model
    DOCUMENT = "document"  # PDF, Office, EPUB, HTML, Markdown, text to Markdown (processors/documents.py)
    WEB = "web"  # a web page's main text, fetched by the node (processors/web_page.py)
    IMAGE = "image"  # OCR of PNG, JPEG, WebP, TIFF, BMP (processors/image_ocr.py)


BUILTIN_KINDS = frozenset(Kind)
# Kinds that take the GPU lane when asked for and a GPU node of the owner
# serves them. A document does only where a GPU node advertises it (its
# docling layout models are installed there: processors/kinds.py); a web page
# never does.
GPU_KINDS = frozenset({Kind.AUDIO, Kind.VIDEO, Kind.URL, Kind.IMAGE})

# A kind is a subject token (`jobs.<owner>.<lane>.<kind>`) and a metrics
# label, so it is a short lowercase token: no `.`, `*` or `>` can widen a
# filter, and a label value stays small.
KIND_MAX = 32
KIND_PATTERN = rf"^[a-z][a-z0-9_]{{0,{KIND_MAX - 1}}}$"
KIND_RE = re.compile(KIND_PATTERN)
JobKind = Annotated[str, Field(pattern=KIND_PATTERN, max_length=KIND_MAX)]

# Kinds a job may be queued for while no live node serves them: the
# transcription kinds every node profile runs, so such a job waits for a
# node (nothing accepted is lost while nodes restart). Any other kind is
# accepted only when a live node advertises it (gateway/routing.py).
WAITING_KINDS = frozenset({Kind.AUDIO, Kind.VIDEO, Kind.URL, Kind.NOOP})


def validate_kind(kind: str) -> str:
    """A kind named outside a model (a processor's declaration, a form field)."""
    if not KIND_RE.fullmatch(kind or ""):
        raise InvalidInput(f"kind must match {KIND_PATTERN}")
    return kind


def validate_owner(owner: str, *, allow_reserved: bool = False) -> str:
    """Owner ids become subject tokens and bucket names, so they are checked
    before anything is built from them (a `.` or `>` would widen a filter)."""
    if not OWNER_RE.fullmatch(owner or ""):
        raise InvalidInput(f"owner id must match {OWNER_RE.pattern}")
    if owner in RESERVED_OWNERS and not allow_reserved:
        raise InvalidInput(f"owner id {owner!r} is reserved")
    return owner


def job_subject(
    queue_owner: str, lane: Lane, kind: str, owner: str | None = None, priority: Priority = Priority.NORMAL
) -> str:
    """Where a job waits (docs/ARCHITECTURE.md, "Fair share and priorities"):
    - an owner's own lane: `jobs.<owner>.<lane>.<kind>` at normal priority
      (the layout before priorities), `jobs.<owner>.<lane>.<kind>.<priority>`
      at high or low;
    - the shared pool: `jobs.shared.<lane>.<kind>.<owner>.<priority>`, the
      owner a token of its own so each owner's share has its consumer and
      can be counted."""
    if queue_owner == SHARED:
        if not owner:
            raise InvalidInput("a shared-pool job names its owner")
        return f"jobs.{SHARED}.{lane}.{kind}.{owner}.{priority}"
    if priority is Priority.NORMAL:
        return f"jobs.{queue_owner}.{lane}.{kind}"
    return f"jobs.{queue_owner}.{lane}.{kind}.{priority}"


def owner_job_filters(owner: str) -> tuple[str, ...]:
    """Subjects of an owner's unfinished jobs: their own lanes, their share
    of the pool, and pool jobs queued in the layout before per-owner shares
    (`jobs.shared.<lane>.<kind>.<owner>`)."""
    return f"jobs.{owner}.>", f"jobs.{SHARED}.*.*.{owner}.*", f"jobs.{SHARED}.*.*.{owner}"


def lane_filter(queue_owner: str, lane: Lane) -> str:
    """Every subject of a lane, whatever the priority (and, for the pool, the owner)."""
    return f"jobs.{queue_owner}.{lane}.>"


def consumer_name(queue_owner: str, lane: Lane) -> str:
    """The lane's normal-priority consumer (`gpu_alice`), or the pool's
    consumer of the layout before per-owner shares (`cpu_shared`)."""
    return f"{lane}_{queue_owner}"


SHARE = "shared"  # the token that marks a pool share's consumer: `cpu-shared_alice`


@dataclass(frozen=True)
class LaneQueue:
    """One consumer on JOBS and the subjects it takes:
    - an owner's own lane at a priority: `gpu_alice` (normal), `gpu-high_alice`,
      `gpu-low_alice`;
    - an owner's share of the shared pool at a priority: `cpu-shared_alice`
      (normal), `cpu-shared-high_alice`, `cpu-shared-low_alice`;
    - the pool's consumer from before shares, `cpu_shared` (`owner` None),
      which keeps serving jobs queued in that layout.
    Names put the owner last, after the first `_`, and nothing before it
    has a `_`, so no owner id can make one queue's name another's (owner
    ids may hold `_` and `-`: `cpu_shared_alice` would be owner
    `shared_alice`'s own CPU lane)."""

    queue_owner: str
    lane: Lane
    priority: Priority = Priority.NORMAL
    owner: str | None = None  # a pool share's owner; None on an own lane and on `cpu_shared`

    @property
    def pool(self) -> bool:
        return self.queue_owner == SHARED

    @property
    def legacy(self) -> bool:
        """The pool's single consumer of the layout before shares."""
        return self.pool and self.owner is None

    @property
    def job_owner(self) -> str | None:
        """Whose jobs wait here (None: anybody's, on `cpu_shared`)."""
        return self.owner if self.pool else self.queue_owner

    @property
    def consumer(self) -> str:
        if self.legacy:
            return consumer_name(SHARED, self.lane)
        head = f"{self.lane}-{SHARE}" if self.pool else str(self.lane)
        if self.priority is not Priority.NORMAL:
            head += f"-{self.priority}"
        return f"{head}_{self.job_owner}"

    @property
    def filter(self) -> str:
        if self.legacy:
            return f"jobs.{SHARED}.{self.lane}.*.*"
        if self.pool:
            return f"jobs.{SHARED}.{self.lane}.*.{self.owner}.{self.priority}"
        if self.priority is Priority.NORMAL:
            return f"jobs.{self.queue_owner}.{self.lane}.*"
        return f"jobs.{self.queue_owner}.{self.lane}.*.{self.priority}"


def own_queues(owner: str, lane: Lane) -> tuple[LaneQueue, ...]:
    """An owner's lane at each priority, in the order a node takes them."""
    return tuple(LaneQueue(owner, lane, p) for p in PRIORITY_ORDER)


def pool_shares(owner: str, lane: Lane = Lane.CPU) -> tuple[LaneQueue, ...]:
    """An owner's share of the shared pool at each priority, in the order a node takes them."""
    return tuple(LaneQueue(SHARED, lane, p, owner) for p in PRIORITY_ORDER)


def queue_of(queue_owner: str, lane: Lane, owner: str, priority: Priority) -> LaneQueue:
    """The queue a job with these fields is published to."""
    if queue_owner == SHARED:
        return LaneQueue(SHARED, lane, priority, owner)
    return LaneQueue(queue_owner, lane, priority)


def parse_consumer_name(name: str) -> LaneQueue | None:
    """The queue of a lane consumer, or None for any other name. The
    inverse of `LaneQueue.consumer`, for tools that list the JOBS consumers
    and for advisories that name a consumer."""
    head, sep, owner = name.partition("_")
    parts = head.split("-")
    if not sep or parts[0] not in Lane.__members__.values() or not OWNER_RE.fullmatch(owner):
        return None
    lane, rest = Lane(parts[0]), parts[1:]
    pool = bool(rest) and rest[0] == SHARE
    if pool:
        rest = rest[1:]
    if len(rest) > 1 or (rest and rest[0] not in (Priority.HIGH, Priority.LOW)):
        return None
    priority = Priority(rest[0]) if rest else Priority.NORMAL
    if pool:
        return None if owner == SHARED else LaneQueue(SHARED, lane, priority, owner)
    if owner == SHARED:
        return LaneQueue(SHARED, lane) if priority is Priority.NORMAL else None
    return LaneQueue(owner, lane, priority)


def queue_of_subject(subject: str) -> LaneQueue | None:
    """The queue a job subject (or its doorbell, `queued.…`) belongs to;
    None for a subject of no queue."""
    tokens = subject.split(".")
    if tokens[0] == QUEUED_PREFIX:
        tokens = tokens[1:]
    else:
        tokens = tokens[1:] if tokens[0] == "jobs" else []
    if len(tokens) < 3 or tokens[1] not in Lane.__members__.values():
        return None
    queue_owner, lane, extra = tokens[0], Lane(tokens[1]), tokens[3:]
    if queue_owner == SHARED:
        if len(extra) == 1:
            return LaneQueue(SHARED, lane)  # the layout before shares
        if len(extra) == 2 and extra[1] in Priority.__members__.values():
            return LaneQueue(SHARED, lane, Priority(extra[1]), extra[0])
        return None
    if not extra:
        return LaneQueue(queue_owner, lane)
    if len(extra) == 1 and extra[0] in (Priority.HIGH, Priority.LOW):
        return LaneQueue(queue_owner, lane, Priority(extra[0]))
    return None


def queued_filter(queue_owner: str, lane: Lane) -> str:
    """Every doorbell of a lane (every priority; in the pool, every owner)."""
    return f"{QUEUED_PREFIX}.{queue_owner}.{lane}.>"


def event_subject(owner: str, job_id: str) -> str:
    return f"events.{owner}.{job_id}"


def start_claim_subject(owner: str, job_id: str, attempt: int) -> str:
    """One subject per attempt: its first message says who took the attempt
    (a node starting it, or the mover sending it to the CPU lane)."""
    return f"starts.{owner}.{job_id}.{attempt}"


def ttl_timer_subject(owner: str, job_id: str) -> str:
    return f"timers.ttl.{owner}.{job_id}"


def webhook_subject(owner: str, job_id: str) -> str:
    return f"webhooks.{owner}.{job_id}"


def cancel_subject(owner: str) -> str:
    """Core NATS (not JetStream): a cancel only matters to a node working now."""
    return f"ctl.{owner}.cancel"


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket (consumers and permissions name it)."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV entry is stored (and sealed) under: `$KV.<bucket>.<key>`;
    `key` may be `>` for a watch of the whole bucket."""
    return f"$KV.{bucket}.{key}"


def object_stream(bucket: str) -> str:
    """The JetStream stream behind an object store bucket."""
    return f"OBJ_{bucket}"


def files_bucket(owner: str) -> str:
    return f"files-{owner}"


def job_key(owner: str, job_id: str) -> str:
    return f"{owner}.{job_id}"


def idempotency_key(owner: str, key_digest: str) -> str:
    """`key_digest` is the SHA-256 (hex) of the client's key: any text a
    client sends becomes a safe KV key, and keys are per owner."""
    return f"{owner}.{key_digest}"


def node_key(owner: str, lane: Lane, node_id: str) -> str:
    return f"{owner}.{lane}.{node_id}"


def input_object(job_id: str, filename: str) -> str:
    return f"in/{job_id}/{filename}"


def is_input_of(owner: str, job_id: str, bucket: str, object_name: str) -> bool:
    """Whether an object is where the gateway stages `job_id`'s input."""
    return bucket == files_bucket(owner) and object_name.startswith(f"in/{job_id}/") and ".." not in object_name


# The owner's cookie file for yt-dlp (PUT /api/v1/auth/cookies), kept only in
# the owner's own bucket; nodes copy it into a URL job's private temp dir.
COOKIES_OBJECT = "auth/cookies.txt"


def result_object(job_id: str, attempt: int) -> str:
    """One object per attempt: a late node finishing an attempt that already
    fell back must not overwrite the result the user was shown."""
    return f"out/{job_id}/{attempt}.json"


def msg_id(job_id: str, lane: Lane, attempt: int) -> str:
    """`Nats-Msg-Id`: a retried publish of the same attempt is dropped by the
    stream's duplicate window."""
    return f"{job_id}.{lane}.{attempt}"


def event_msg_id(job_id: str, attempt: int, event_type: str) -> str:
    return f"{job_id}.{attempt}.{event_type}"
