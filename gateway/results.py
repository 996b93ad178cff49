"""Reading a finished job's result, for the result route and for the
synchronous endpoints (the older API's `/process/*`, OpenAI's)."""

from __future__ import annotations

from pydantic import ValidationError

from bus.result_store import read_result
from gateway.state import GatewayState
from schemas.errors import Conflict, JobFailed, ResultUnreadable, StillRunning
from schemas.jobs import JobRecord, JobStatus
from schemas.results import Transcript


async def read_transcript(st: GatewayState, rec: JobRecord) -> bytes:
    """The stored result JSON of a succeeded job (409 if there is none)."""
    if rec.status != JobStatus.SUCCEEDED or (rec.result_object is None and rec.result_event_seq is None):
        detail = f": {rec.error.code}: {rec.error.message}" if rec.error else ""
        raise Conflict(f"job {rec.job_id} is {rec.status}, no result{detail}")
    return await read_result(st.js, rec)


def parse_transcript(rec: JobRecord, data: bytes) -> Transcript:
    """The stored result as a transcript. The object is the one the node
    named, so it may be anything: a 409 saying so, never a 500."""
    try:
        return Transcript.model_validate_json(data)
    except ValidationError:
        raise ResultUnreadable(f"job {rec.job_id}: its stored result is not a transcript") from None


async def finished_transcript(
    st: GatewayState, rec: JobRecord, timeout_s: float
) -> tuple[JobRecord, Transcript | None]:
    """For the synchronous endpoints: wait up to `timeout_s` for the job.
    Returns (record, transcript), transcript None while it still runs; a
    failed job raises its own error (JobFailed: 422 with its code)."""
    rec = await st.jobs.wait_terminal(rec.owner, rec.job_id, timeout_s)
    if not rec.terminal:
        return rec, None
    if rec.status == JobStatus.FAILED and rec.error is not None:
        raise JobFailed(rec.error.code, f"job {rec.job_id} failed: {rec.error.message}")
    return rec, parse_transcript(rec, await read_transcript(st, rec))


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
