"""Job submission, status, listing and results."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus import objects
from bus.joblog import job_fields
from gateway import auth, fleet_models, routing
from gateway.auth import Principal
from gateway.bodies import json_body
from gateway.state import GatewayState
from gateway.uploads import MultipartToObject, ParsedForm
from schemas import names
from schemas.errors import Conflict, InvalidInput, JobFailed, ResultUnreadable, UnsupportedMedia
from schemas.formats import render
from schemas.jobs import JobRecord, JobStatus, StagedInput, TranscribeOptions, new_job_id, now
from schemas.names import Kind
from schemas.results import Transcript
from schemas.url_guard import check_submitted

log = logging.getLogger("gpubus.gateway.jobs")

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
User = Annotated[Principal, Depends(auth.user)]
T = TypeVar("T")


class JsonJobRequest(BaseModel):
    """A job without an upload: a media URL (or `noop` for benchmarks)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=4096)
    kind: Kind | None = None
    gpu: bool = False
    options: TranscribeOptions = TranscribeOptions()


class Accepted(BaseModel):
    job_id: str
    status: JobStatus
    lane: str
    routed_reason: str
    status_url: str
    result_url: str


def parse_bool(value: str | None, field: str) -> bool:
    if value is None or value == "":
        return False
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"{field}: expected true or false, got {value!r}")


def make_options(values: dict[str, Any]) -> TranscribeOptions:
    """Options from any endpoint's fields; a bad value is a 422 naming it."""
    try:
        return TranscribeOptions.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidInput(f"options.{'.'.join(map(str, first['loc']))}: {first['msg']}") from e


def parse_options(raw: str | None) -> TranscribeOptions:
    if not raw:
        return TranscribeOptions()
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"options: not JSON ({e.msg})") from e
    except RecursionError:  # the form field is capped in bytes, not in depth
        raise InvalidInput("options: nested too deeply") from None
    if not isinstance(values, dict):
        raise InvalidInput("options: expected a JSON object")
    return make_options(values)


def parse_kind(raw: str | None, sniffed: Kind | None) -> Kind:
    if not raw:
        return sniffed or Kind.AUDIO
    try:
        kind = Kind(raw.strip().lower())
    except ValueError:
        raise InvalidInput(f"kind: one of {[k.value for k in Kind if k is not Kind.NOOP]}") from None
    if kind not in (Kind.AUDIO, Kind.VIDEO):
        raise InvalidInput(f"kind {kind} does not take a file upload")
    return kind


def job_view(rec: JobRecord) -> dict[str, Any]:
    body = rec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"stream_seq"})
    body["status_url"] = f"/api/v1/jobs/{rec.job_id}"
    body["result_url"] = f"/api/v1/jobs/{rec.job_id}/result"
    return body


async def route_for(st: GatewayState, owner: str, kind: Kind, gpu: bool) -> routing.Route:
    fleet = routing.Fleet(
        owner_gpu_live=bool(st.nodes.live(owner=owner, lane=names.Lane.GPU)),
        owner_cpu_live=bool(st.nodes.live(owner=owner, lane=names.Lane.CPU)),
        gpu_backlog=0,
    )
    wanted, _ = routing.gpu_wanted(kind, gpu, st.settings.gpu_mode)
    if wanted and fleet.owner_gpu_live:
        fleet = routing.Fleet(fleet.owner_gpu_live, fleet.owner_cpu_live, await st.gpu_backlog(owner))
    return routing.choose(owner, kind, gpu, st.settings.gpu_mode, fleet, st.settings.gpu_max_backlog)


async def enqueue(
    st: GatewayState,
    owner: str,
    job_id: str,
    kind: Kind,
    gpu: bool,
    options: TranscribeOptions,
    *,
    staged: StagedInput | None = None,
    url: str | None = None,
) -> JobRecord:
    """Route, publish, record. The message is stored (with its Nats-Msg-Id,
    retried through a NATS restart) before the record is written, so a
    record never claims a job that is not queued; the materializer waits for
    a record that is not there yet."""
    options = fleet_models.resolve(st, owner, options)
    route = await route_for(st, owner, kind, gpu)
    t = now()
    rec = JobRecord(
        job_id=job_id, owner=owner, queue_owner=route.queue_owner, kind=kind, lane=route.lane,
        routed_reason=route.reason, created_at=t, updated_at=t, input=staged, url=url, options=options,
    )
    rec.stream_seq = await st.publisher.publish(rec.to_message())
    await st.jobs.create(rec, give_up_after_s=st.settings.publish_timeout)
    st.metrics.jobs_submitted.labels(lane=route.lane.value, kind=kind.value).inc()
    log.info(
        "job %s owner=%s kind=%s lane=%s reason=%s queued", job_id, owner, kind, route.lane, route.reason,
        extra=job_fields(job_id, owner, route.lane, None, "queued", kind=str(kind), reason=route.reason),
    )
    return rec


def accepted(rec: JobRecord) -> JSONResponse:
    body = Accepted(
        job_id=rec.job_id, status=rec.status, lane=rec.lane.value, routed_reason=rec.routed_reason,
        status_url=f"/api/v1/jobs/{rec.job_id}", result_url=f"/api/v1/jobs/{rec.job_id}/result",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers={"Location": body.status_url})


def job_form(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
    """The fields of `POST /api/v1/jobs`: `kind`, `gpu`, `options` (JSON)."""
    return (
        parse_kind(form.fields.get("kind"), form.sniffed_kind),
        parse_bool(form.fields.get("gpu"), "gpu"),
        parse_options(form.fields.get("options")),
    )


def admitted(st: GatewayState, principal: Principal) -> contextlib.AbstractAsyncContextManager[None]:
    """Per-user limit on unfinished jobs: a slot is taken before anything
    is staged and held until the job is queued or has failed (429 if none)."""
    return st.admission.slot(principal.user_id, principal.max_active_jobs or st.settings.max_active_jobs)


async def stage_upload(
    st: GatewayState,
    request: Request,
    owner: str,
    job_id: str,
    interpret: Callable[[ParsedForm], T],
    *,
    max_bytes: int,
) -> tuple[StagedInput, ParsedForm, T]:
    """Stream the multipart `file` into the owner's bucket. `interpret` reads
    the other form fields (each endpoint has its own); if it refuses them the
    staged object is purged, like any other failure before commit."""
    upload = MultipartToObject(
        request.headers.get("content-type", ""),
        lambda filename: objects.ObjectWriter(
            st.js, names.files_bucket(owner), names.input_object(job_id, filename), max_bytes=max_bytes
        ),
    )
    try:
        form = await upload.run(request.stream())
        if form.size == 0:
            raise InvalidInput("the uploaded file is empty")
        fields = interpret(form)
        assert upload.writer is not None
        await upload.writer.commit(description=form.content_type)
    except BaseException:
        if upload.writer is not None:
            await upload.writer.abort()
        raise
    st.metrics.upload_bytes.inc(form.size)
    staged = StagedInput(
        bucket=upload.writer.bucket, object_name=upload.writer.name, filename=form.filename or "upload",
        size=form.size, sha256=form.sha256, content_type=form.content_type,
    )
    return staged, form, fields


async def submit_upload(
    st: GatewayState,
    request: Request,
    principal: Principal,
    interpret: Callable[[ParsedForm], tuple[Kind, bool, TranscribeOptions]],
) -> tuple[JobRecord, ParsedForm]:
    """Multipart upload to a queued job; the endpoint's own fields stay in the form."""
    owner = principal.user_id
    async with admitted(st, principal):
        await st.ensure_owner(owner)
        job_id = new_job_id()
        max_bytes = (principal.max_upload_mb or st.settings.max_upload_mb) * 1024 * 1024
        staged, form, (kind, gpu, options) = await stage_upload(st, request, owner, job_id, interpret, max_bytes=max_bytes)
        try:
            return await enqueue(st, owner, job_id, kind, gpu, options, staged=staged), form
        except BaseException:  # refused (say, an unknown model) or never queued: leave nothing behind
            with contextlib.suppress(Exception):
                await objects.delete_object(st.js, staged.bucket, staged.object_name)
            raise


async def submit_url(
    st: GatewayState, principal: Principal, url: str, gpu: bool, options: TranscribeOptions
) -> JobRecord:
    """A URL job: the syntax and any address literal are checked here (422);
    the node that downloads it checks every address it connects to
    (schemas/url_guard.py)."""
    url = check_submitted(url, allow_private=st.settings.allow_private_urls)
    async with admitted(st, principal):
        await st.ensure_owner(principal.user_id)
        return await enqueue(st, principal.user_id, new_job_id(), Kind.URL, gpu, options, url=url)


@router.post("", status_code=202, response_model=Accepted)
async def submit(request: Request, principal: User) -> JSONResponse:
    """Multipart (`file`, `gpu`, `kind`, `options` JSON) or JSON (`url`)."""
    st: GatewayState = request.app.state.gateway
    owner = principal.user_id
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/"):
        rec, _ = await submit_upload(st, request, principal, job_form)
        return accepted(rec)
    if ctype.startswith("application/json"):
        req = await json_body(request, JsonJobRequest)
        kind = req.kind or (Kind.URL if req.url else None)
        if kind is Kind.URL:
            if not req.url:
                raise InvalidInput("url: required for a url job")
            return accepted(await submit_url(st, principal, req.url, req.gpu, req.options))
        if kind is not Kind.NOOP:
            raise InvalidInput("a JSON job needs `url`; upload files as multipart/form-data")
        if not st.settings.enable_noop:
            raise InvalidInput("the noop kind is for benchmarks; enable it with GPUBUS_ENABLE_NOOP=true")
        async with admitted(st, principal):
            await st.ensure_owner(owner)
            return accepted(await enqueue(st, owner, new_job_id(), kind, req.gpu, req.options, url=req.url))
    raise UnsupportedMedia("send multipart/form-data with a `file` part, or JSON with `url`")


@router.get("")
async def list_jobs(
    request: Request,
    principal: User,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    st: GatewayState = request.app.state.gateway
    recs = await st.jobs.list(principal.user_id)
    if status is not None:
        recs = [r for r in recs if r.status == status]
    recs.sort(key=lambda r: r.created_at, reverse=True)
    return {"jobs": [job_view(r) for r in recs[:limit]], "total": len(recs)}


MAX_WAIT_S = 60.0
Wait = Annotated[
    float,
    Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the request open until the job is finished (long poll)"),
]


async def job_record(st: GatewayState, owner: str, job_id: str, wait: float) -> JobRecord:
    """The record now, or (with `wait`) once terminal or after `wait` seconds:
    a client learns of completion without polling, the moment it happens."""
    if wait > 0:
        return await st.jobs.wait_terminal(owner, job_id, wait)
    rec, _ = await st.jobs.get(owner, job_id)
    return rec


@router.get("/{job_id}")
async def get_job(request: Request, job_id: str, principal: User, wait: Wait = 0.0) -> dict[str, Any]:
    st: GatewayState = request.app.state.gateway
    return job_view(await job_record(st, principal.user_id, job_id, wait))


async def read_transcript(st: GatewayState, rec: JobRecord) -> bytes:
    """The stored result JSON of a succeeded job (409 if there is none)."""
    if rec.status != JobStatus.SUCCEEDED or not rec.result_object:
        detail = f": {rec.error.code}: {rec.error.message}" if rec.error else ""
        raise Conflict(f"job {rec.job_id} is {rec.status}, no result{detail}")
    return await objects.read_bytes(st.js, names.files_bucket(rec.owner), rec.result_object)


async def finished_transcript(st: GatewayState, rec: JobRecord, timeout_s: float) -> tuple[JobRecord, Transcript | None]:
    """For the synchronous endpoints: wait up to `timeout_s` for the job.
    Returns (record, transcript), transcript None while it still runs; a
    failed job raises its own error (JobFailed: 422 with its code)."""
    rec = await st.jobs.wait_terminal(rec.owner, rec.job_id, timeout_s)
    if not rec.terminal:
        return rec, None
    if rec.status == JobStatus.FAILED and rec.error is not None:
        raise JobFailed(rec.error.code, f"job {rec.job_id} failed: {rec.error.message}")
    return rec, parse_transcript(rec, await read_transcript(st, rec))


def parse_transcript(rec: JobRecord, data: bytes) -> Transcript:
    """The stored result as a transcript. The object is the one the node
    named, so it may be anything: a 409 saying so, never a 500."""
    try:
        return Transcript.model_validate_json(data)
    except ValidationError:
        raise ResultUnreadable(f"job {rec.job_id}: its stored result is not a transcript") from None


@router.get("/{job_id}/result")
async def get_result(
    request: Request, job_id: str, principal: User, format: str = "json", wait: Wait = 0.0
) -> Response:
    st: GatewayState = request.app.state.gateway
    rec = await job_record(st, principal.user_id, job_id, wait)
    data = await read_transcript(st, rec)
    if rec.kind is Kind.NOOP:
        return Response(data, media_type="application/json")
    body, media_type = render(parse_transcript(rec, data), format)
    return Response(body, media_type=media_type)
