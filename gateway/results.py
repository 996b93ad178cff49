"""Reading a finished job's result, for the result route and for the
synchronous endpoints (the older API's `/process/*`, OpenAI's)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from bus.result_store import read_result
from gateway.state import GatewayState
from schemas import document_formats, formats
from schemas.diarization import DiarizedTranscript
from schemas.document_formats import Rendered
from schemas.documents import DocumentResult, OcrResult, WebPageResult
from schemas.errors import Conflict, JobFailed, ResultUnreadable, StillRunning
from schemas.jobs import JobRecord, JobStatus
from schemas.names import Kind
from schemas.results import Transcript


async def read_transcript(st: GatewayState, rec: JobRecord) -> bytes:
    """The stored result JSON of a succeeded job (409 if there is none)."""
    if rec.status != JobStatus.SUCCEEDED or (rec.result_object is None and rec.result_event_seq is None):
        detail = f": {rec.error.code}: {rec.error.message}" if rec.error else ""
        raise Conflict(f"job {rec.job_id} is {rec.status}, no result{detail}")
    return await read_result(st.js, rec, st.recent_results)


M = TypeVar("M", bound=BaseModel)

# The result model of each document kind, rendered by schemas/document_formats.py.
DOCUMENT_RESULTS: dict[str, type[Rendered]] = {
    Kind.DOCUMENT: DocumentResult,
    Kind.WEB: WebPageResult,
    Kind.IMAGE: OcrResult,
}


def parse_result(rec: JobRecord, data: bytes, model: type[M]) -> M:
    """The stored result as `model`. The object is the one the node named,
    so it may be anything: a 409 saying so, never a 500."""
    try:
        return model.model_validate_json(data)
    except ValidationError:
        raise ResultUnreadable(f"job {rec.job_id}: its stored result is not a {rec.kind} result") from None


def parse_by_kind(rec: JobRecord, data: bytes) -> Transcript | Rendered:
    """A document kind's result, or a transcript, with its speakers when
    the job asked for them."""
    transcript = DiarizedTranscript if rec.options.diarize else Transcript
    model: type[Transcript | Rendered] = DOCUMENT_RESULTS.get(rec.kind, transcript)
    return parse_result(rec, data, model)


def render_result(result: Transcript | Rendered, fmt: str) -> tuple[str, str]:
    """(body, media type) of a transcript or a document kind's result in `fmt`."""
    if isinstance(result, Transcript):
        return formats.render(result, fmt)
    return document_formats.render(result, fmt)


async def finished_result(
    st: GatewayState, rec: JobRecord, timeout_s: float
) -> tuple[JobRecord, Transcript | Rendered | None]:
    """For the synchronous endpoints: wait up to `timeout_s` for the job.
    Returns (record, its result: a transcript or a document kind's), None
    while it still runs; a failed job raises its own error (JobFailed: 422
    with its code)."""
    rec = await st.jobs.wait_terminal(rec.owner, rec.job_id, timeout_s)
    if not rec.terminal:
        return rec, None
    if rec.status == JobStatus.FAILED and rec.error is not None:
        raise JobFailed(rec.error.code, f"job {rec.job_id} failed: {rec.error.message}")
    return rec, parse_by_kind(rec, await read_transcript(st, rec))


async def finished_transcript(
    st: GatewayState, rec: JobRecord, timeout_s: float
) -> tuple[JobRecord, Transcript | None]:
    """`finished_result` for endpoints that take audio and video only."""
    rec, result = await finished_result(st, rec, timeout_s)
    return rec, (as_transcript(rec, result) if result is not None else None)


def parse_transcript(rec: JobRecord, data: bytes) -> Transcript:
    """`parse_by_kind` for endpoints that take audio and video only."""
    return as_transcript(rec, parse_by_kind(rec, data))


def as_transcript(rec: JobRecord, result: Transcript | Rendered) -> Transcript:
    if not isinstance(result, Transcript):
        raise ResultUnreadable(f"job {rec.job_id}: its stored result is not a transcript")
    return result


async def transcript_within(st: GatewayState, rec: JobRecord, timeout_s: float) -> Transcript:
    """For the synchronous endpoints that have no "accepted" answer (OpenAI's,
    whisper-asr-webservice's): the transcript, or StillRunning (423, with
    `x-should-retry: false`) naming the job, which goes on."""
    rec, transcript = await finished_transcript(st, rec, timeout_s)
    if transcript is None:
        raise StillRunning(
            f"job {rec.job_id} is still {rec.status} after {timeout_s:.0f}s; it goes on: "
            f"GET /api/v1/jobs/{rec.job_id}/result?wait=60 (repeat until 200)",
            job_id=rec.job_id,
        )
    return transcript
