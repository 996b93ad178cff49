"""OpenAI-compatible speech to text: `POST /v1/audio/transcriptions` and
`POST /v1/audio/translations`.

Synchronous like OpenAI's: the upload becomes a job on the bus (GPU lane
when the owner has a live GPU node, else CPU), and the answer is its result.
A job still running after GPUBUS_SYNC_TIMEOUT answers 423 STILL_RUNNING with
its job id and `x-should-retry: false` (gateway/results.py); it goes on and
its result stays under /api/v1/jobs/{id}. Errors are OpenAI's
(gateway/errors.py), and so is a retry: the client's retry of a request
gets the first try's job (gateway/idempotency.py).
Point the official client at the gateway: `OpenAI(base_url=f"{gateway}/v1",
api_key=<gpubus key>)`; `model="whisper-1"` means the fleet's default model.
`stream=true` answers Server-Sent Events instead, with the text segment by
segment as the node makes it (gateway/openai_stream.py), for any model.
gpubus' own options (`vad_filter`, `beam_size`, `ttl_s`, `diarize`, ...) are
extra form fields (`extra_body={"vad_filter": True}`).
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway import form_docs
from gateway.auth import Principal
from gateway.deps import State, User
from gateway.form_fields import make_options, media_kind, parse_bool
from gateway.openai_stream import stream_response
from gateway.results import transcript_within
from gateway.state import GatewayState
from gateway.submission import Interpret, submit_upload
from gateway.uploads import ParsedForm
from schemas.diarization import SpeakerSegment, SpeakerWord
from schemas.errors import InvalidInput
from schemas.formats import render, whisper_segment
from schemas.jobs import TranscribeOptions
from schemas.languages import language_name
from schemas.names import Kind, Priority
from schemas.results import Segment, Transcript, Word

router = APIRouter(prefix="/v1/audio", tags=["openai"])

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
# gpubus' own options, taken as extra form fields under their own names
# (`diarize` and the speaker counts among them); OpenAI's fields (prompt,
# timestamp_granularities) win over the two it names otherwise.
EXTRA_OPTIONS = tuple(
    n for n in TranscribeOptions.model_fields if n not in ("task", "model", "language", "temperature")
)


def _field(form: ParsedForm, name: str) -> str | None:
    value = form.fields.get(name)
    return value.strip() if value is not None and value.strip() else None


def _temperature(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        raise InvalidInput(f"temperature: not a number: {raw!r}") from None


def _interpreter(task: str) -> Interpret:
    """The OpenAI form fields → job options; checked before the upload is committed."""

    def interpret(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
        if _field(form, "model") is None:
            raise InvalidInput("model: required (whisper-1 = this fleet's default model)")
        parse_bool(_field(form, "stream"), "stream")  # checked before the upload is committed
        fmt = _field(form, "response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise InvalidInput(f"response_format: one of {list(RESPONSE_FORMATS)}")
        granularities = {g for name in GRANULARITY_FIELDS for g in form.lists.get(name, [])}
        values: dict[str, object] = {k: v for k in EXTRA_OPTIONS if (v := _field(form, k)) is not None}
        openai_fields = {
            "model": _field(form, "model"),
            "language": _field(form, "language") if task == "transcribe" else None,
            "initial_prompt": _field(form, "prompt"),
            "temperature": _temperature(_field(form, "temperature")),
            "word_timestamps": True if "word" in granularities else None,
        }
        values |= {k: v for k, v in openai_fields.items() if v is not None}
        options = make_options(values | {"task": task})
        return media_kind(form), True, options

    return interpret


def openai_verbose(t: Transcript) -> dict[str, Any]:
    """OpenAI's verbose_json shape, with faster-whisper's real per-segment
    figures (a result made before they were recorded has None there), and
    `usage` billed by duration as OpenAI reports it for whisper-1. A
    diarized job's segments and words carry their `speaker` besides."""
    body: dict[str, Any] = {
        "task": t.task,
        "language": language_name(t.language),
        "duration": t.duration,
        "text": t.text,
        "segments": [whisper_segment(s) | _speaker_of(s) for s in t.segments],
        "usage": {"type": "duration", "seconds": math.ceil(t.duration)},
    }
    words = [w for s in t.segments for w in (s.words or [])]
    if words:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} | _speaker_of(w) for w in words]
    return body


def _speaker_of(part: Segment | Word) -> dict[str, str | None]:
    """`{"speaker": ...}` for a diarized transcript's segment or word, else nothing."""
    return {"speaker": part.speaker} if isinstance(part, SpeakerSegment | SpeakerWord) else {}


def respond(t: Transcript, fmt: str) -> Response:
    if fmt == "json":
        return JSONResponse({"text": t.text})
    if fmt == "verbose_json":
        return JSONResponse(openai_verbose(t))
    body, media_type = render(t, fmt)
    return Response(body, media_type=media_type)


async def _run(request: Request, st: GatewayState, principal: Principal, task: str) -> Response:
    rec, form = await submit_upload(st, request, principal, _interpreter(task), priority=Priority.HIGH)
    if parse_bool(_field(form, "stream"), "stream"):  # the text as it is made (gateway/openai_stream.py)
        return stream_response(st, rec)
    transcript = await transcript_within(st, rec, st.settings.sync_timeout)
    return respond(transcript, _field(form, "response_format") or "json")


@router.post("/transcriptions", openapi_extra=form_docs.openai_form(RESPONSE_FORMATS, translation=False))
async def transcriptions(request: Request, st: State, principal: User) -> Response:
    return await _run(request, st, principal, "transcribe")


@router.post("/translations", openapi_extra=form_docs.openai_form(RESPONSE_FORMATS, translation=True))
async def translations(request: Request, st: State, principal: User) -> Response:
    """Into English (`language` is not a field of OpenAI's translations)."""
    return await _run(request, st, principal, "translate")
