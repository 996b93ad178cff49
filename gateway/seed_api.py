"""The older API's endpoints, as thin aliases over the job API.

- `POST /process/file` (multipart) and `POST /process/url` (JSON), priority
  high unless asked otherwise (the key's cap permitting): wait up to
  `timeout` seconds (default 60, at most GPUBUS_SYNC_TIMEOUT) and answer with
  the result in `format` (json, text, srt, vtt, md); a job still running then
  answers 202 with the job, exactly like `POST /api/v1/jobs`.
- `POST /api/v1/ingest/file` and `POST /api/v1/ingest/url`: always 202.

Options may be given flat (`language`, `task`, `model`, `word_timestamps`,
`vad_filter`, `initial_prompt`) as the older clients sent them, or as an
`options` object (JSON string in a form); flat fields win.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.bodies import json_body
from gateway.deps import State, User
from gateway.form_fields import make_options, parse_bool, parse_kind, parse_options
from gateway.job_views import accepted
from gateway.results import finished_transcript
from gateway.state import GatewayState
from gateway.submission import submit_upload, submit_url
from gateway.uploads import ParsedForm
from schemas.errors import InvalidInput
from schemas.formats import RENDERERS, render
from schemas.jobs import JobRecord, TranscribeOptions
from schemas.names import Kind, Priority

router = APIRouter(tags=["compat"])

DEFAULT_TIMEOUT_S = 60.0
FLAT_TEXT = ("language", "task", "model", "initial_prompt", "priority")
FLAT_BOOL = ("word_timestamps", "vad_filter")


class SeedUrlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=4096)
    gpu: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    language: str | None = None
    task: str | None = None
    model: str | None = None
    initial_prompt: str | None = None
    priority: str | None = None
    word_timestamps: bool | None = None
    vad_filter: bool | None = None
    format: str = "json"
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0)


def _check_format(fmt: str) -> str:
    if fmt not in RENDERERS:
        raise InvalidInput(f"format: one of {sorted(RENDERERS)}")
    return fmt


def seed_form(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
    """The older API's form: flat option fields over an `options` object, and `format`."""
    f = form.fields
    _check_format(f.get("format") or "json")
    base = parse_options(f.get("options")).model_dump(exclude_unset=True)
    flat: dict[str, Any] = {k: f[k] for k in FLAT_TEXT if f.get(k)}
    flat.update({k: parse_bool(f[k], k) for k in FLAT_BOOL if f.get(k)})
    kind = parse_kind(f.get("kind"), form.sniffed_kind)
    if kind not in (Kind.AUDIO, Kind.VIDEO):  # a plugin's kind: its result is no transcript
        raise InvalidInput(f"kind: the older API transcribes audio and video, not {kind}")
    return Kind(kind), parse_bool(f.get("gpu"), "gpu"), make_options(base | flat)


def url_job_options(req: SeedUrlRequest) -> TranscribeOptions:
    flat = {k: getattr(req, k) for k in (*FLAT_TEXT, *FLAT_BOOL) if getattr(req, k) is not None}
    return make_options(req.options | flat)


def _timeout(st: GatewayState, raw: str | float | None) -> float:
    try:
        value = float(raw) if raw not in (None, "") else DEFAULT_TIMEOUT_S
    except (TypeError, ValueError):
        raise InvalidInput(f"timeout: not a number: {raw!r}") from None
    if value <= 0:
        raise InvalidInput("timeout: must be positive")
    return min(value, st.settings.sync_timeout)


async def _answer(st: GatewayState, rec: JobRecord, fmt: str, timeout_s: float) -> Response:
    rec, transcript = await finished_transcript(st, rec, timeout_s)
    if transcript is None:
        return accepted(rec)
    headers = {"X-Gpubus-Job-Id": rec.job_id}
    if fmt == "json":
        body = {"job_id": rec.job_id, "status": rec.status.value, "result": json.loads(transcript.model_dump_json())}
        return JSONResponse(body, headers=headers)
    text, media_type = render(transcript, fmt)
    return Response(text, media_type=media_type, headers=headers)


@router.post("/process/file")
async def process_file(request: Request, st: State, principal: User) -> Response:
    rec, form = await submit_upload(st, request, principal, seed_form, priority=Priority.HIGH)
    return await _answer(st, rec, form.fields.get("format") or "json", _timeout(st, form.fields.get("timeout")))


@router.post("/process/url")
async def process_url(request: Request, st: State, principal: User) -> Response:
    req = await json_body(request, SeedUrlRequest)
    fmt = _check_format(req.format)
    rec = await submit_url(st, principal, req.url, req.gpu, url_job_options(req), priority=Priority.HIGH)
    return await _answer(st, rec, fmt, _timeout(st, req.timeout))


@router.post("/api/v1/ingest/file", status_code=202)
async def ingest_file(request: Request, st: State, principal: User) -> JSONResponse:
    rec, _ = await submit_upload(st, request, principal, seed_form)
    return accepted(rec)


@router.post("/api/v1/ingest/url", status_code=202)
async def ingest_url(request: Request, st: State, principal: User) -> JSONResponse:
    req = await json_body(request, SeedUrlRequest)
    return accepted(await submit_url(st, principal, req.url, req.gpu, url_job_options(req)))
