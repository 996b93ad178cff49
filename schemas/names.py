"""Every stream, consumer, bucket, subject and object name, in one place.

Operators type these names into the `nats` CLI, and nodes get NATS permissions
scoped to them, so they are part of the public contract: change them only with
a migration.
"""

from __future__ import annotations

import re
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
EVENTS_SUBJECTS = "events.>"
STARTS_SUBJECTS = "starts.>"
TIMERS_SUBJECTS = "timers.>"
WEBHOOKS_SUBJECTS = "webhooks.>"
MAX_DELIVERIES_SUBJECTS = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.>"


class Lane(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


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


def job_subject(queue_owner: str, lane: Lane, kind: str, owner: str | None = None) -> str:
    """`queue_owner` is the job's owner, or `shared` for the shared pool,
    where the owner is a last token so an owner's jobs can still be counted."""
    if queue_owner == SHARED and owner:
        return f"jobs.{SHARED}.{lane}.{kind}.{owner}"
    return f"jobs.{queue_owner}.{lane}.{kind}"


def owner_job_filters(owner: str) -> tuple[str, str]:
    """Subjects of an owner's unfinished jobs: their own lanes, their share of the pool."""
    return f"jobs.{owner}.>", f"jobs.{SHARED}.*.*.{owner}"


def lane_filter(queue_owner: str, lane: Lane) -> str:
    return f"jobs.{queue_owner}.{lane}.>"


def consumer_name(queue_owner: str, lane: Lane) -> str:
    return f"{lane}_{queue_owner}"


def parse_consumer_name(name: str) -> tuple[str, Lane] | None:
    """(queue_owner, lane) of a lane consumer, or None for any other name.
    The inverse of `consumer_name`, for tools that list the JOBS consumers."""
    lane, sep, owner = name.partition("_")
    if not sep or lane not in Lane.__members__.values() or not OWNER_RE.fullmatch(owner):
        return None
    return owner, Lane(lane)


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
