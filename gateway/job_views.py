"""How a job is shown: its record as JSON with the URLs to follow, and the
202 answer to a submission. Every endpoint that shows a job uses these, so
the shape and the URLs are written once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from schemas.jobs import JobRecord, JobStatus

JOBS_PATH = "/api/v1/jobs"


def status_url(job_id: str) -> str:
    return f"{JOBS_PATH}/{job_id}"


def result_url(job_id: str) -> str:
    return f"{JOBS_PATH}/{job_id}/result"


class Accepted(BaseModel):
    job_id: str
    status: JobStatus
    lane: str
    routed_reason: str
    status_url: str
    result_url: str


def job_view(rec: JobRecord) -> dict[str, Any]:
    body = rec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"stream_seq", "result_event_seq", "created_rev"}
    )
    body["priority"] = rec.priority.value  # kept in the options; normal on records from before priorities
    body["status_url"] = status_url(rec.job_id)
    body["result_url"] = result_url(rec.job_id)
    return body


def webhook_payload(rec: JobRecord) -> str:
    """The body a terminal record is delivered as (schemas/webhooks.py), in
    the envelope the Standard Webhooks spec suggests; the record as
    `GET /api/v1/jobs/{id}` shows it, without its deliveries."""
    data = job_view(rec)
    data.pop("webhook", None)
    at = datetime.fromtimestamp(rec.finished_at or rec.updated_at, tz=UTC)
    body = {"type": f"job.{rec.status.value}", "timestamp": at.isoformat().replace("+00:00", "Z"), "data": data}
    return json.dumps(body, separators=(",", ":"))


def accepted(rec: JobRecord) -> JSONResponse:
    body = Accepted(
        job_id=rec.job_id,
        status=rec.status,
        lane=rec.lane.value,
        routed_reason=rec.routed_reason,
        status_url=status_url(rec.job_id),
        result_url=result_url(rec.job_id),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url})
