"""Lifecycle events nodes publish to `events.<owner>.<job_id>`.

Nodes never write job records: they only report. The gateway side folds these
events into records (the materializer), so an untrusted node can lie only about
its own job, never about another user's.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import BaseModel, Field

from schemas.jobs import (
    ID_MAX,
    NODE_ID_MAX,
    OBJECT_NAME_MAX,
    PHASE_MAX,
    SCHEMA_VERSION,
    ErrorInfo,
    JobId,
    ResultSummary,
)
from schemas.names import Lane


class EventType(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # The node gives the job back on its last delivery (shutdown, a transient
    # failure): the gateway side moves it on at once instead of waiting for
    # a puller that may never come.
    RELEASED = "released"
    # One finished piece of text (a Whisper segment), sent as the node makes
    # it: the partial text behind `/events` and the OpenAI endpoint's
    # `stream=true`. Advisory: it never changes the job record.
    SEGMENT = "segment"


TERMINAL_EVENTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})

# A segment's text is cut to this many characters (Whisper's segments are a
# sentence or two; the final result keeps the whole text), so a segment
# event stays a few KiB, far under the stream's EVENT_MAX_BYTES.
SEGMENT_TEXT_MAX = 4000

# A result at most this long (the JSON text) travels inside its `succeeded`
# event, and that event, kept in EVENTS, is where it is stored: no object
# store round trips on the node (chunk, then meta) or the gateway (meta,
# then chunk). Most transcripts are far below it; longer ones keep the
# object store. Bounded by the stream's EVENT_MAX_BYTES (bus/topology.py).
INLINE_RESULT_MAX = 192 * 1024


def inline_digest(text: str) -> str:
    """What the record keeps of an inline result, and the reader checks."""
    return hashlib.sha256(text.encode()).hexdigest()


class TextSegment(BaseModel):
    """A finished piece of a job's text: its place (`index`, from 0 in the
    order the node made them) and where it sits in the media, in seconds."""

    index: int = Field(ge=0)
    start: float
    end: float
    text: str = Field(max_length=SEGMENT_TEXT_MAX)

    @classmethod
    def of(cls, index: int, start: float, end: float, text: str) -> TextSegment:
        """For the side that reports one: an over-long text is cut to fit."""
        return cls(index=index, start=start, end=end, text=text[:SEGMENT_TEXT_MAX])


class JobEvent(BaseModel):
    v: int = SCHEMA_VERSION
    type: EventType
    job_id: JobId
    owner: str = Field(max_length=ID_MAX)
    attempt: int = Field(ge=1)
    lane: Lane
    node_id: str = Field(max_length=NODE_ID_MAX)
    at: float
    progress: float | None = Field(None, ge=0.0, le=1.0)
    media_s_done: float | None = None  # of the phase's media, when it names one
    phase: str | None = Field(None, max_length=PHASE_MAX)  # what the job is doing (transcribing, diarizing)
    pages_done: int | None = Field(None, ge=0)  # documents and images (schemas/processing.PAGES)
    pages_total: int | None = Field(None, ge=0)
    result_object: str | None = Field(None, max_length=OBJECT_NAME_MAX)
    result_inline: str | None = Field(None, max_length=INLINE_RESULT_MAX)
    summary: ResultSummary | None = None
    error: ErrorInfo | None = None
    segment: TextSegment | None = None
    # On `started` and outcomes: when the run began. A run that succeeds
    # within the node's grace sends no `started`, and one that runs longer
    # sends it late (bus/job_events.StartNotice), so the record's
    # `started_at` comes from here; None from a node before it (then `at`).
    started_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS
