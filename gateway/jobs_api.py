"""The job routes: submit, list, status and result. What they do is
elsewhere: submission (gateway/submission.py), the fields of a form
(gateway/form_fields.py), how a job is shown (gateway/job_views.py) and its
result read (gateway/results.py)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from bus.retry import retrying
from gateway import form_docs, url_kinds
from gateway.bodies import json_body
from gateway.deps import State, User
from gateway.form_fields import job_form, with_gpu_field, with_priority_field
from gateway.idempotency import of_json
from gateway.job_views import Accepted, accepted, job_view
from gateway.results import DOCUMENT_RESULTS, parse_by_kind, read_transcript, render_result
from gateway.state import GatewayState
from gateway.submission import submit_json_kind, submit_upload, submit_url, submit_without_upload
from gateway.webhook_fields import ALIAS, FIELD, job_webhook
from schemas.errors import InvalidInput, UnsupportedMedia
from schemas.jobs import JobRecord, JobStatus, TranscribeOptions
from schemas.languages import check_language
from schemas.names import JobKind, Kind, Priority

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

# Kinds whose results the gateway knows and renders in several formats.
RENDERED_KINDS = frozenset({Kind.AUDIO, Kind.VIDEO, Kind.URL, *DOCUMENT_RESULTS})

MAX_WAIT_S = 60.0
Wait = Annotated[
    float,
    Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the request open until the job is finished (long poll)"),
]


ResultFormat = Annotated[
    str,
    Query(
        description="json (default); audio, video, url: text, srt, vtt, md; document, web, image: md, text; "
        "a plugin's kind: json only"
    ),
]

TEXT_MAX = 48 * 1024  # under the JSON body cap (gateway/bodies.py), with room for the rest


class JsonJobRequest(BaseModel):
    """A job without an upload: a media URL, `noop` for benchmarks, or a job
    of another kind with a `url` (`web`), inline `text` (`document`), or
    nothing (a plugin's kind may take any of these)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=4096)
    kind: JobKind | None = None
    text: str | None = Field(None, max_length=TEXT_MAX)
    gpu: bool | Literal["required"] = False
    priority: Priority | None = None  # default normal
    options: TranscribeOptions = TranscribeOptions()
    # Where the job's terminal states are POSTed (schemas/webhooks.py);
    # `callback_url` is the same field under the name other services use.
    webhook_url: str | None = Field(None, max_length=4096)
    callback_url: str | None = Field(None, max_length=4096)


async def submit_json(st: GatewayState, request: Request, principal: User) -> JSONResponse:
    """A URL job, a `noop` one where benchmarks are enabled, or another kind."""
    req = await json_body(request, JsonJobRequest)
    idem = of_json(request, principal.user_id, req)
    check_language(req.options.language)
    gpu, options = with_gpu_field(req.gpu, with_priority_field(req.priority, req.options))
    webhook = job_webhook(st, principal, {FIELD: req.webhook_url, ALIAS: req.callback_url})
    kind = req.kind or (await url_kinds.detect(req.url) if req.url else None)
    if kind not in (Kind.URL, Kind.NOOP, Kind.AUDIO, Kind.VIDEO, None):
        rec = await submit_json_kind(
            st, principal, kind, gpu, options, url=req.url, text=req.text, webhook=webhook, idem=idem
        )
        return accepted(rec)
    if req.text is not None:
        raise InvalidInput(f"text: inline text is for kinds that read it, not {kind or 'a job without a kind'}")
    if kind == Kind.URL:
        if not req.url:
            raise InvalidInput("url: required for a url job")
        return accepted(await submit_url(st, principal, req.url, gpu, options, webhook=webhook, idem=idem))
    if kind != Kind.NOOP:
        raise InvalidInput("a JSON job needs `url` (or a `kind`); upload files as multipart/form-data")
    if not st.settings.enable_noop:
        raise InvalidInput("the noop kind is for benchmarks; enable it with GPUBUS_ENABLE_NOOP=true")
    return accepted(
        await submit_without_upload(st, principal, kind, gpu, options, url=req.url, webhook=webhook, idem=idem)
    )


@router.post("", status_code=202, response_model=Accepted, openapi_extra=form_docs.JOB_FORM)
async def submit(request: Request, st: State, principal: User) -> JSONResponse:
    """Multipart (`file`, `gpu`, `kind`, `options` JSON, `webhook_url`) or JSON (`url`, `kind`,
    `text`, `gpu`, `options`, `webhook_url`). An upload's kind comes from its bytes: `audio`,
    `video`, `document` (PDF, DOCX, PPTX, XLSX, EPUB, HTML, Markdown, text) or
    `image` (PNG, JPEG, WebP, TIFF, BMP); anything else is 415. JSON: `url`
    alone is media to transcribe when it is a media site's or a media file's
    (gateway/url_kinds.py), else a web page to read; `kind` overrides
    (`{"url": …, "kind": "web"}` a web page, `"kind": "url"` media);
    `{"kind": "document", "text": …}` inline text. A kind no live node serves
    is 422 `KIND_NOT_SERVED`."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/"):
        rec, _ = await submit_upload(st, request, principal, job_form)
        return accepted(rec)
    if ctype.startswith("application/json"):
        return await submit_json(st, request, principal)
    raise UnsupportedMedia("send multipart/form-data with a `file` part, or JSON with `url`")


@router.get("")
async def list_jobs(
    st: State,
    principal: User,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The newest `limit` jobs (with `status`, of that status), newest first,
    and `total`, how many jobs the owner has of every status. Reads about
    `limit` records however many the owner keeps (bus/newest_records.py);
    an owner runs at most GPUBUS_MAX_JOB_LISTINGS at once (429 past it).

    A status may be rare, and finding `limit` of it would read every
    record the owner keeps (1.2 s of the gateway's CPU at 30,000), so a
    listing by status looks among the latest GPUBUS_LISTING_REACH jobs
    only; `complete` says whether older jobs were left unread."""
    keep = (lambda rec: True) if status is None else (lambda rec: rec.status == status)
    reach = None if status is None else st.settings.listing_reach
    with st.job_listing(principal.user_id):
        found = await st.jobs.newest(principal.user_id, limit, keep=keep, reach=reach)
    return {"jobs": [job_view(r) for r in found.records], "total": found.total, "complete": found.complete}


async def job_record(st: GatewayState, owner: str, job_id: str, wait: float) -> JobRecord:
    """The record now, or (with `wait`) once terminal or after `wait` seconds:
    a client learns of completion without polling, the moment it happens.

    Like a publish, the read rides out a NATS restart or leader election
    for `publish_timeout` (past the wait) before it becomes a 503: a client
    polling its jobs while a cluster fails over saw 503s for several
    seconds (the compose fault test), though every record was there."""
    deadline = time.monotonic() + wait

    async def once() -> JobRecord:
        left = deadline - time.monotonic()
        if left > 0:
            return await st.jobs.wait_terminal(owner, job_id, left)
        rec, _ = await st.jobs.get(owner, job_id)
        return rec

    return await retrying(once, what=f"read job {job_id}", give_up_after_s=wait + st.settings.publish_timeout)


@router.get("/{job_id}")
async def get_job(job_id: str, st: State, principal: User, wait: Wait = 0.0) -> dict[str, Any]:
    return job_view(await job_record(st, principal.user_id, job_id, wait))


@router.get("/{job_id}/result")
async def get_result(
    job_id: str, st: State, principal: User, format: ResultFormat = "json", wait: Wait = 0.0
) -> Response:
    rec = await job_record(st, principal.user_id, job_id, wait)
    data = await read_transcript(st, rec)
    if rec.kind not in RENDERED_KINDS:  # noop, a plugin's kind: its JSON as the node stored it
        if format != "json" and rec.kind != Kind.NOOP:
            raise InvalidInput(f"format: a {rec.kind} job's result is served as json only")
        return Response(data, media_type="application/json")
    body, media_type = render_result(parse_by_kind(rec, data), format)
    return Response(body, media_type=media_type)
