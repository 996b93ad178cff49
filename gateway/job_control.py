"""Cancel and retry: the owner changing a job's course."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from nats.js.errors import NotFoundError

from bus import objects
from bus.jobstore import with_seq
from gateway.jobs_api import User, job_view, route_for
from gateway.state import GatewayState
from schemas import names
from schemas.errors import Conflict, NotFound
from schemas.jobs import JobRecord, JobStatus, now

log = logging.getLogger("gpubus.gateway.control")

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


def _cancel(rec: JobRecord) -> JobRecord | None:
    if rec.terminal:
        return None
    rec.status = JobStatus.CANCELLED
    rec.finished_at = now()
    return rec


@router.post("/{job_id}/cancel")
async def cancel(request: Request, job_id: str, principal: User) -> dict[str, Any]:
    """A queued job is deleted from the stream before any node takes it; a
    running one's node is told over core NATS to stop. The record says
    `cancelled` either way, and a node finishing anyway cannot change that."""
    st: GatewayState = request.app.state.gateway
    owner = principal.user_id
    before, _ = await st.jobs.get(owner, job_id)
    if before.terminal:
        raise Conflict(f"job {job_id} is already {before.status}")
    rec = await st.jobs.update(owner, job_id, _cancel)
    if rec.status != JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} is already {rec.status}")
    if rec.stream_seq is not None:
        try:
            await st.js.delete_msg(names.JOBS_STREAM, rec.stream_seq)
        except NotFoundError:
            pass  # a node has it already (or it is done): the control message stops it
    await st.nc.publish(names.cancel_subject(owner), job_id.encode())
    st.metrics.jobs_finished.labels(lane=rec.lane.value, kind=rec.kind.value, status="cancelled", code="").inc()
    log.info("job %s owner=%s cancelled (was %s)", job_id, owner, before.status,
             extra={"job_id": job_id, "owner": owner, "lane": rec.lane.value})
    return job_view(rec)


@router.post("/{job_id}/retry", status_code=202)
async def retry(request: Request, job_id: str, principal: User) -> dict[str, Any]:
    """Same job id, next attempt, a fresh routing decision, the staged input."""
    st: GatewayState = request.app.state.gateway
    owner = principal.user_id
    rec, _ = await st.jobs.get(owner, job_id)
    if rec.status not in RETRYABLE:
        raise Conflict(f"only failed or cancelled jobs can be retried; job {job_id} is {rec.status}")
    if rec.input is not None:
        try:
            await objects.object_info(st.js, rec.input.bucket, rec.input.object_name)
        except NotFound:
            raise Conflict("the staged input has expired; submit the file again") from None
    route = await route_for(st, owner, rec.kind, rec.lane is names.Lane.GPU or rec.fallback is not None)
    attempt = rec.attempts + 1

    def requeue(r: JobRecord) -> JobRecord | None:
        if r.status not in RETRYABLE or r.attempts != attempt - 1:
            return None
        r.attempts, r.lane, r.queue_owner, r.routed_reason = attempt, route.lane, route.queue_owner, route.reason
        r.status, r.error, r.node_id, r.progress = JobStatus.QUEUED, None, None, 0.0
        r.result_object = r.summary = r.started_at = r.finished_at = r.fallback = None
        return r

    rec = await st.jobs.update(owner, job_id, requeue)
    if rec.attempts != attempt or rec.status != JobStatus.QUEUED:
        raise Conflict(f"job {job_id} changed while retrying; it is {rec.status}")
    seq = await st.publisher.publish(rec.to_message())
    rec = await st.jobs.update(owner, job_id, lambda r: with_seq(r, attempt, seq))
    st.metrics.jobs_submitted.labels(lane=route.lane.value, kind=rec.kind.value).inc()
    log.info("job %s owner=%s retried as attempt %d on %s", job_id, owner, attempt, route.lane,
             extra={"job_id": job_id, "owner": owner, "lane": route.lane.value})
    return job_view(rec)

