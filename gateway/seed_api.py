"""The older API's endpoints, as thin aliases over the job API.

- `POST /process/file` (multipart) and `POST /process/url` (JSON), priority
  high unless asked otherwise (the key's cap permitting): wait up to
  `timeout` seconds (default 60, at most GPUBUS_SYNC_TIMEOUT) and answer with
  the result in `format` (json, text, srt, vtt, md; a document or image: json,
  text, md); a job still running then answers 202 with the job, exactly like
  `POST /api/v1/jobs`. Files are audio, video, documents and images, as the
  older API routed them.
- `POST /api/v1/ingest/file` and `POST /api/v1/ingest/url`: always 202.

Options may be given flat (`language`, `task`, `model`, `word_timestamps`,
`vad_filter`, `initial_prompt`, and `diarize` with `num_speakers`,
`min_speakers`, `max_speakers`) as the older clients sent them, or as an
`options` object (JSON string in a form); flat fields win. A diarized job's
`format` may also be `rttm`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway import form_docs
from gateway.auth import Principal
from gateway.bodies import json_body
from gateway.deps import State, User
from gateway.form_fields import FILE_KINDS, make_options, parse_bool, parse_kind, parse_options
from gateway.idempotency import of_json
from gateway.job_views import accepted
from gateway.results import DOCUMENT_RESULTS, finished_result, render_result
from gateway.state import GatewayState
from gateway.submission import submit_upload, submit_url
from gateway.uploads import ParsedForm
from gateway.webhook_fields import ALIAS, FIELD, job_webhook
from schemas.diarized_formats import RENDERERS as DIARIZED_RENDERERS
from schemas.document_formats import RENDERERS as DOCUMENT_RENDERERS
from schemas.errors import InvalidInput
from schemas.formats import RENDERERS
from schemas.jobs import JobRecord, TranscribeOptions
from schemas.names import Kind, Priority
from schemas.webhooks import Webhook

router = APIRouter(tags=["compat"])

DEFAULT_TIMEOUT_S = 60.0
# Passed on as given (pydantic reads a count from its text and refuses what is none).
FLAT_TEXT = ("language", "task", "model", "initial_prompt", "num_speakers", "min_speakers", "max_speakers", "priority")
FLAT_BOOL = ("word_timestamps", "vad_filter", "diarize")


class SeedUrlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=4096)
    gpu: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    language: str | None = None
    task: str | None = None
    model: str | None = None
    initial_prompt: str | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    priority: str | None = None
    word_timestamps: bool | None = None
    vad_filter: bool | None = None
    diarize: bool | None = None
    format: str = "json"
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    webhook_url: str | None = Field(None, max_length=4096)  # schemas/webhooks.py
    callback_url: str | None = Field(None, max_length=4096)  # the same, as other services name it


def _check_format(fmt: str, options: TranscribeOptions, kind: str = Kind.AUDIO) -> str:
    """A document kind has its own formats; a diarized job's include RTTM."""
    formats = DOCUMENT_RENDERERS if kind in DOCUMENT_RESULTS else DIARIZED_RENDERERS if options.diarize else RENDERERS
    if fmt not in formats:
        raise InvalidInput(f"format: one of {sorted(formats)}")
    return fmt


def seed_form(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
    """The older API's form: flat option fields over an `options` object, and `format`."""
    f = form.fields
    base = parse_options(f.get("options")).model_dump(exclude_unset=True)
    flat: dict[str, Any] = {k: f[k] for k in FLAT_TEXT if f.get(k)}
    flat.update({k: parse_bool(f[k], k) for k in FLAT_BOOL if f.get(k)})
    options = make_options(base | flat)
    kind = parse_kind(f.get("kind"), form.sniffed_kind)
    if kind not in FILE_KINDS:  # a plugin's kind: its result is no transcript
        raise InvalidInput(f"kind: the older API takes audio, video, documents and images, not {kind}")
    _check_format(f.get("format") or "json", options, kind)
    return Kind(kind), parse_bool(f.get("gpu"), "gpu"), options


def url_job_options(req: SeedUrlRequest) -> TranscribeOptions:
    flat = {k: getattr(req, k) for k in (*FLAT_TEXT, *FLAT_BOOL) if getattr(req, k) is not None}
    return make_options(req.options | flat)


def _webhook(st: GatewayState, principal: Principal, req: SeedUrlRequest) -> Webhook | None:
    return job_webhook(st, principal, {FIELD: req.webhook_url, ALIAS: req.callback_url})


def _timeout(st: GatewayState, raw: str | float | None) -> float:
    try:
        value = float(raw) if raw not in (None, "") else DEFAULT_TIMEOUT_S
    except (TypeError, ValueError):
        raise InvalidInput(f"timeout: not a number: {raw!r}") from None
    if value <= 0:
        raise InvalidInput("timeout: must be positive")
    return min(value, st.settings.sync_timeout)


async def _answer(st: GatewayState, rec: JobRecord, fmt: str, timeout_s: float) -> Response:
    rec, result = await finished_result(st, rec, timeout_s)
    if result is None:
        return accepted(rec)
    headers = {"X-Gpubus-Job-Id": rec.job_id}
    if fmt == "json":
        body = {"job_id": rec.job_id, "status": rec.status.value, "result": json.loads(result.model_dump_json())}
        return JSONResponse(body, headers=headers)
    text, media_type = render_result(result, fmt)
    return Response(text, media_type=media_type, headers=headers)


@router.post("/process/file", openapi_extra=form_docs.SEED_FORM)
async def process_file(request: Request, st: State, principal: User) -> Response:
    rec, form = await submit_upload(st, request, principal, seed_form, priority=Priority.HIGH)
    return await _answer(st, rec, form.fields.get("format") or "json", _timeout(st, form.fields.get("timeout")))


@router.post("/process/url")
async def process_url(request: Request, st: State, principal: User) -> Response:
    req = await json_body(request, SeedUrlRequest)
    options = url_job_options(req)
    fmt = _check_format(req.format, options)
    idem = of_json(request, principal.user_id, req)
    rec = await submit_url(
        st,
        principal,
        req.url,
        req.gpu,
        options,
        webhook=_webhook(st, principal, req),
        idem=idem,
        priority=Priority.HIGH,
    )
    return await _answer(st, rec, fmt, _timeout(st, req.timeout))


@router.post("/api/v1/ingest/file", status_code=202, openapi_extra=form_docs.SEED_FORM)
async def ingest_file(request: Request, st: State, principal: User) -> JSONResponse:
    rec, _ = await submit_upload(st, request, principal, seed_form)
    return accepted(rec)


@router.post("/api/v1/ingest/url", status_code=202)
async def ingest_url(request: Request, st: State, principal: User) -> JSONResponse:
    req = await json_body(request, SeedUrlRequest)
    webhook = _webhook(st, principal, req)
    idem = of_json(request, principal.user_id, req)
    return accepted(await submit_url(st, principal, req.url, req.gpu, url_job_options(req), webhook=webhook, idem=idem))
