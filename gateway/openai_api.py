"""OpenAI-compatible speech to text: `POST /v1/audio/transcriptions` and
`POST /v1/audio/translations`.

Synchronous like OpenAI's: the upload becomes a job on the bus (GPU lane
when the owner has a live GPU node, else CPU), and the answer is its result.
A job still running after GPUBUS_SYNC_TIMEOUT answers 504 STILL_RUNNING with
its job id; it goes on and its result stays under /api/v1/jobs/{id}.
Point the official client at the gateway: `OpenAI(base_url=f"{gateway}/v1",
api_key=<gpubus key>)`; `model="whisper-1"` means the fleet's default model.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth import Principal
from gateway.deps import State, User
from gateway.form_fields import make_options
from gateway.results import finished_transcript
from gateway.state import GatewayState
from gateway.submission import Interpret, submit_upload
from gateway.uploads import ParsedForm
from schemas.errors import InvalidInput, StillRunning
from schemas.formats import render
from schemas.jobs import TranscribeOptions
from schemas.names import Kind, Priority
from schemas.results import Transcript

router = APIRouter(prefix="/v1/audio", tags=["openai"])

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")


def _field(form: ParsedForm, name: str) -> str | None:
    value = form.fields.get(name)
    return value.strip() if value is not None and value.strip() else None


def _temperature(raw: str | None) -> float:
    try:
        return float(raw) if raw is not None else 0.0
    except ValueError:
        raise InvalidInput(f"temperature: not a number: {raw!r}") from None


def _interpreter(task: str) -> Interpret:
    """The OpenAI form fields → job options; checked before the upload is committed."""

    def interpret(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
        if _field(form, "model") is None:
            raise InvalidInput("model: required (whisper-1 = this fleet's default model)")
        fmt = _field(form, "response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise InvalidInput(f"response_format: one of {list(RESPONSE_FORMATS)}")
        granularities = {g for name in GRANULARITY_FIELDS for g in form.lists.get(name, [])}
        options = make_options(
            {
                "model": _field(form, "model"),
                "language": _field(form, "language") if task == "transcribe" else None,
                "initial_prompt": _field(form, "prompt"),
                "temperature": _temperature(_field(form, "temperature")),
                "task": task,
                "word_timestamps": "word" in granularities,
            }
        )
        return form.sniffed_kind or Kind.AUDIO, True, options

    return interpret


def openai_verbose(t: Transcript) -> dict[str, Any]:
    """OpenAI's verbose_json shape, with faster-whisper's real per-segment
    figures (a result made before they were recorded has None there), and
    `usage` billed by duration as OpenAI reports it for whisper-1."""
    body: dict[str, Any] = {
        "task": t.task,
        "language": t.language,
        "duration": t.duration,
        "text": t.text,
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in t.segments
        ],
        "usage": {"type": "duration", "seconds": math.ceil(t.duration)},
    }
    words = [w for s in t.segments for w in (s.words or [])]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in words]
    return body


def respond(t: Transcript, fmt: str) -> Response:
    if fmt == "json":
        return JSONResponse({"text": t.text})
    if fmt == "verbose_json":
        return JSONResponse(openai_verbose(t))
    body, media_type = render(t, fmt)
    return Response(body, media_type=media_type)


async def _run(request: Request, st: GatewayState, principal: Principal, task: str) -> Response:
    rec, form = await submit_upload(st, request, principal, _interpreter(task), priority=Priority.HIGH)
    rec, transcript = await finished_transcript(st, rec, st.settings.sync_timeout)
    if transcript is None:
        raise StillRunning(
            f"job {rec.job_id} is still {rec.status} after {st.settings.sync_timeout:.0f}s; "
            f"it goes on: GET /api/v1/jobs/{rec.job_id}/result"
        )
    return respond(transcript, _field(form, "response_format") or "json")


@router.post("/transcriptions")
async def transcriptions(request: Request, st: State, principal: User) -> Response:
    return await _run(request, st, principal, "transcribe")


@router.post("/translations")
async def translations(request: Request, st: State, principal: User) -> Response:
    """Into English (`language` is not a field of OpenAI's translations)."""
    return await _run(request, st, principal, "translate")
