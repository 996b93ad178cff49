"""Cancel and retry: the owner changing a job's course."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter

from bus import job_ttl, objects
from bus.joblog import job_fields
from bus.queueing import Claim, never_queued, queue_attempt
from gateway import routing
from gateway.deps import State, User
from gateway.job_views import job_view
from gateway.routing import Route
from gateway.state import GatewayState
from gateway.submission import capped, route_for
from schemas import names
from schemas.errors import Conflict, NotFound
from schemas.jobs import JobRecord, JobStatus, now
from schemas.names import Priority

log = logging.getLogger("gpubus.gateway.control")

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)


def _cancel(rec: JobRecord) -> JobRecord | None:
    if rec.terminal:
        return None
    rec.status = JobStatus.CANCELLED
    rec.finished_at = now()
    return rec


@router.post("/{job_id}/cancel")
async def cancel(job_id: str, st: State, principal: User) -> dict[str, Any]:
    """A queued job is deleted from the stream before any node takes it; a
    running one's node is told over core NATS to stop. The record says
    `cancelled` either way, and a node finishing anyway cannot change that."""
    owner = principal.user_id
    before, _ = await st.jobs.get(owner, job_id)
    if before.terminal:
        raise Conflict(f"job {job_id} is already {before.status}")
    rec = await st.jobs.update(owner, job_id, _cancel)
    if rec.status != JobStatus.CANCELLED:
        raise Conflict(f"job {job_id} is already {rec.status}")
    # Not noted yet: this gateway's queueing may know it (its note would withdraw
    # it too, NOTE_DELAY_S later); another gateway's note withdraws it then.
    seq = rec.stream_seq if rec.stream_seq is not None else st.notes.seq(owner, job_id, rec.attempts)
    if seq is not None:
        await st.publisher.withdraw(seq)
    await st.nc.publish(names.cancel_subject(owner), job_id.encode())
    st.metrics.jobs_finished.labels(lane=rec.lane.value, kind=rec.kind, status="cancelled", code="").inc()
    log.info(
        "job %s owner=%s cancelled (was %s)",
        job_id,
        owner,
        before.status,
        extra=job_fields(job_id, owner, rec.lane, rec.node_id, "cancelled"),
    )
    return job_view(rec)


def retryable(st: GatewayState, rec: JobRecord) -> bool:
    """Failed or cancelled, or a claim whose message never got out (the
    bus failed the publish and the undo alike: bus/queueing.py)."""
    return rec.status in RETRYABLE or never_queued(rec, publish_timeout_s=st.settings.publish_timeout)


def requeue(
    st: GatewayState, attempt: int, route: Route, expires_at: float | None = None, max_priority: Priority | None = None
) -> Claim:
    """Claim: the record of `attempt`, if the job is still retryable at the
    one before. The job keeps its priority, lowered to the retrying key's
    `max_priority` if that is lower."""

    def claim(r: JobRecord) -> JobRecord | None:
        if not retryable(st, r) or r.attempts != attempt - 1:
            return None
        r.options.priority = capped(r.priority, max_priority)
        r.attempts, r.lane, r.queue_owner, r.routed_reason = attempt, route.lane, route.queue_owner, route.reason
        r.status, r.error, r.node_id, r.progress = JobStatus.QUEUED, None, None, 0.0
        r.result_object = r.result_event_seq = r.result_sha256 = None
        r.summary = r.started_at = r.finished_at = r.fallback = r.stream_seq = None
        r.expires_at = expires_at  # the TTL counts again from the retry
        return r

    return claim


@router.post("/{job_id}/retry", status_code=202)
async def retry(job_id: str, st: State, principal: User) -> dict[str, Any]:
    """Same job id, next attempt, the staged input, and a fresh routing
    decision from the user's own GPU wish (not from where the last attempt
    happened to run)."""
    owner = principal.user_id
    rec, _ = await st.jobs.get(owner, job_id)
    if not retryable(st, rec):
        raise Conflict(f"only failed, cancelled or expired jobs can be retried; job {job_id} is {rec.status}")
    if rec.input is not None:
        try:
            await objects.object_info(st.js, rec.input.bucket, rec.input.object_name)
        except NotFound:
            raise Conflict("the staged input has expired; submit the file again") from None
    route = await route_for(st, owner, rec.kind, routing.gpu_wish(rec), rec.options)
    attempt = rec.attempts + 1
    deadline = job_ttl.expires_at(rec.options.ttl_s, now())
    armed = rec.model_copy(update={"expires_at": deadline, "attempts": attempt})
    await job_ttl.arm(st.js, armed, give_up_after_s=st.publisher.give_up_after_s)
    claim = requeue(st, attempt, route, deadline, principal.max_priority)
    queued = await queue_attempt(st.jobs, st.publisher, owner, job_id, attempt, claim)
    if queued is None:
        raise Conflict(f"job {job_id} changed while retrying")
    st.metrics.jobs_submitted.labels(lane=route.lane.value, kind=queued.kind).inc()
    log.info(
        "job %s owner=%s retried as attempt %d on %s",
        job_id,
        owner,
        attempt,
        route.lane,
        extra=job_fields(job_id, owner, route.lane, None, "queued", attempt=attempt, reason=route.reason),
    )
    return job_view(queued)
