"""Jobs on the wire (`JobMessage`) and at rest (`JobRecord`)."""

from __future__ import annotations

import re
import secrets
import time
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.diarization import DIARIZATION, DiarizeOptions
from schemas.names import JobKind, Lane, LaneQueue, Priority, queue_of
from schemas.webhooks import Webhook

SCHEMA_VERSION = 1
JOB_ID_BYTES = 16  # 128 random bits: job ids are unguessable

# Bounds on what an untrusted node may put into a record it reports on: an
# unbounded string made each record up to max_payload (8 MB), and the
# gateway caches thousands of records (review F4).
ID_MAX = 64  # job ids, owner ids
NODE_ID_MAX = 128
CODE_MAX = 64
MESSAGE_MAX = 2000
OBJECT_NAME_MAX = 512
NAME_MAX = 256  # model names or paths, devices, languages
PHASE_MAX = 32  # a job's phase in progress events and its record (transcribing, diarizing)


JOB_ID_PATTERN = rf"^j[0-9a-f]{{{2 * JOB_ID_BYTES}}}$"  # what new_job_id makes, and nothing else
JOB_ID_RE = re.compile(JOB_ID_PATTERN)
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN)]  # every model that names a job validates it


def new_job_id() -> str:
    return "j" + secrets.token_hex(JOB_ID_BYTES)


def now() -> float:
    return time.time()


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not finished within its `options.ttl_s` (bus/job_ttl.py)


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class TranscribeOptions(DiarizeOptions):
    """Options a client may set; unknown keys are an error, not ignored.
    The diarization options (`diarize`, `num_speakers`, `min_speakers`,
    `max_speakers`) come from `DiarizeOptions`, flat beside the others."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[a-zA-Z-]+$")
    task: Literal["transcribe", "translate"] = "transcribe"
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = Field(None, max_length=2000)
    model: str | None = Field(None, max_length=200)
    beam_size: int = Field(1, ge=1, le=10)
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    # Schedule-to-start on the GPU lane (bus/start_deadline.py): not
    # started by a GPU node within this many seconds, the job moves to the
    # CPU lane. None: the gateway's GPUBUS_GPU_START_TIMEOUT.
    start_timeout_s: float | None = Field(None, gt=0, le=86_400)
    # `gpu: "required"`: the GPU lane or nothing. Queued there even with no
    # live GPU node (one may come), failed NO_GPU_NODE when none started it
    # within the start timeout, never moved to the CPU lane.
    gpu_required: bool = False
    # Time to live: not finished this many seconds after it was queued, the
    # job ends `expired` and a node running it is told to stop.
    ttl_s: float | None = Field(None, gt=0, le=7 * 86_400)
    # Only the first this many seconds of the media are transcribed
    # (`POST /detect-language` reads 30 s, as whisper-asr-webservice does).
    clip_s: float | None = Field(None, gt=0, le=86_400)
    # Scheduling priority (the request's `priority` field lands here, like
    # `gpu: "required"` above). None on a request: the endpoint's default
    # (normal; high on the synchronous ones), capped by the key's
    # `max_priority`; a queued job always has one (None on records and
    # messages from before priorities: normal).
    priority: Priority | None = None

    @model_validator(mode="after")
    def _counts_need_diarize(self) -> TranscribeOptions:
        """A speaker count without `diarize` would be silently ignored: the
        client meant to diarize, so it is told rather than given a plain
        transcript."""
        counts = [f for f in ("num_speakers", "min_speakers", "max_speakers") if getattr(self, f) is not None]
        if counts and not self.diarize:
            raise ValueError(f"{', '.join(counts)} {'needs' if len(counts) == 1 else 'need'} diarize: true")
        return self

    def needs(self) -> frozenset[str]:
        """What a node must serve, beyond the job's kind, to run a job with
        these options: names of the features nodes advertise in their
        heartbeat (`NodeHeartbeat.features`)."""
        return frozenset({DIARIZATION}) if self.diarize else frozenset()


class StagedInput(BaseModel):
    """A file staged in the owner's object store bucket by the gateway."""

    bucket: str
    object_name: str
    filename: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str = "application/octet-stream"


class ErrorInfo(BaseModel):
    code: str = Field(max_length=CODE_MAX)
    message: str = Field(max_length=MESSAGE_MAX)

    @classmethod
    def of(cls, code: str, message: str) -> ErrorInfo:
        """For the side that reports an error (a node, the router): an
        exception's text may be long, and an over-long report would be
        refused whole, so it is cut to fit."""
        return cls(code=code[:CODE_MAX], message=message[:MESSAGE_MAX])


class Fallback(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_lane: Lane = Field(alias="from")
    reason: str
    at: float


class JobMessage(BaseModel):
    """What a node pulls. Everything it needs, nothing it may not see."""

    v: int = SCHEMA_VERSION
    job_id: JobId
    owner: str
    queue_owner: str  # the owner, or `shared` for the shared CPU pool
    lane: Lane
    kind: JobKind
    attempt: int = Field(ge=1)
    input: StagedInput | None = None
    url: str | None = None
    options: TranscribeOptions = TranscribeOptions()
    submitted_at: float

    @property
    def priority(self) -> Priority:
        return self.options.priority or Priority.NORMAL

    @property
    def queue(self) -> LaneQueue:
        """The queue (consumer) this message is published to."""
        return queue_of(self.queue_owner, self.lane, self.owner, self.priority)


class StageSummary(BaseModel):
    """A step of a job's work timed on its own (diarization after Whisper):
    the node counts it in its per-stage metrics, and the record keeps it."""

    name: str = Field(max_length=32)
    engine: str = Field(max_length=NAME_MAX)
    processing_s: float = Field(ge=0)
    media_s: float = Field(ge=0)


class ResultSummary(BaseModel):
    """Small facts about a result, kept in the job record for listings."""

    duration_s: float = 0.0
    processing_s: float = 0.0
    language: str | None = Field(None, max_length=NAME_MAX)
    device: str | None = Field(None, max_length=NAME_MAX)
    model: str | None = Field(None, max_length=NAME_MAX)
    real_time_factor: float | None = None
    stages: list[StageSummary] = Field(default_factory=list, max_length=8)
    # Pages converted (documents: PDF pages or slides, 1 for an unpaginated
    # file) or recognised (images: 1, or a TIFF's pages): pages/s and images/s.
    pages: int | None = Field(None, ge=0)


class JobRecord(BaseModel):
    """The job as the owner sees it; written only by the gateway side."""

    v: int = SCHEMA_VERSION
    job_id: JobId
    owner: str
    queue_owner: str
    kind: JobKind
    lane: Lane
    status: JobStatus = JobStatus.QUEUED
    routed_reason: str
    attempts: int = 1
    node_id: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    input: StagedInput | None = None
    url: str | None = None
    options: TranscribeOptions = TranscribeOptions()
    error: ErrorInfo | None = None
    result_object: str | None = None
    # A result small enough to ride in its `succeeded` event: that event's
    # EVENTS sequence and the digest of the result text, so reading it is
    # one direct get, checked against what the materializer saw.
    result_event_seq: int | None = Field(None, ge=1)
    result_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    summary: ResultSummary | None = None
    progress: float = 0.0
    phase: str | None = Field(None, max_length=PHASE_MAX)  # of a running job done in steps, from its progress
    fallback: Fallback | None = None
    # The user's own GPU wish (the `gpu` field), kept so a retry is routed
    # as the submission was: the lane says only where the attempt ran (a
    # GPU wish goes to CPU when no GPU node is live). None on records made
    # before the field existed.
    gpu_requested: bool | None = None
    stream_seq: int | None = None
    # The KV revision that created the record, written with its first
    # update (a record never updated is at it still): listings rank the
    # newest jobs by it, a server's order that needs no clocks
    # (bus/newest_records.py). None until then, and on older records.
    created_rev: int | None = Field(None, ge=1)
    late_completions: int = 0
    # When the job expires (`options.ttl_s` after the attempt was queued);
    # a TTL timer firing for an earlier deadline changes nothing.
    expires_at: float | None = None
    # Where each terminal state is POSTed, and how those deliveries went
    # (schemas/webhooks.py). Never in the job message: nodes do not see it.
    webhook: Webhook | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def priority(self) -> Priority:
        return self.options.priority or Priority.NORMAL

    def to_message(self) -> JobMessage:
        return JobMessage(
            job_id=self.job_id,
            owner=self.owner,
            queue_owner=self.queue_owner,
            lane=self.lane,
            kind=self.kind,
            attempt=self.attempts,
            input=self.input,
            url=self.url,
            options=self.options,
            submitted_at=self.created_at,
        )
