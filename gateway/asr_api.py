"""whisper-asr-webservice's API, so the clients built for it (Bazarr's
Whisper provider, subgen's users, speakr...) can point at a gpubus fleet:

- `POST /asr?task=&language=&initial_prompt=&encode=&output=&word_timestamps=&vad_filter=`
  with the media as the multipart part `audio_file`; answers the transcript
  as a file in `output` (txt, vtt, srt, tsv, json), as that service does.
- `POST /detect-language?encode=`: `{"detected_language": "english",
  "language_code": "en", "confidence": 0.98}` from the first 30 seconds.

`encode=false` means the upload is raw 16 kHz mono s16le PCM, as Bazarr
sends it: a WAV header is put in front of it as it streams in. The API key
comes as a bearer token or, for clients that can only be given a URL, as
`?api_key=` (these two routes only). Both are synchronous: a job still
running after GPUBUS_SYNC_TIMEOUT answers 423 STILL_RUNNING with its job id.
"""

from __future__ import annotations

import json
import struct
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway import form_docs
from gateway.auth import Principal
from gateway.deps import State, UrlUser
from gateway.form_fields import make_options, media_kind
from gateway.results import transcript_within
from gateway.state import GatewayState
from gateway.submission import Interpret, submit_upload
from gateway.uploads import ParsedForm
from schemas.formats import render, whisper_segment
from schemas.jobs import TranscribeOptions
from schemas.languages import language_name
from schemas.names import Kind
from schemas.results import Transcript

router = APIRouter(tags=["whisper-asr-webservice"])

FILE_FIELD = "audio_file"
DETECT_S = 30.0  # whisper-asr-webservice detects on the first 30 s
PCM_RATE = 16_000
ENGINE = "faster_whisper"  # its `Asr-Engine` header: what the fleet's nodes run
Output = Literal["txt", "vtt", "srt", "tsv", "json"]
Encode = Annotated[bool, Query(description="false: the file is raw 16 kHz mono s16le PCM, as Bazarr sends it")]


def raw_pcm_header() -> bytes:
    """A WAV header of unknown length (0xFFFFFFFF sizes: read to the end)
    for 16 kHz mono 16-bit PCM."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)


def _prefix(encode: bool) -> bytes:
    return b"" if encode else raw_pcm_header()


def _options(values: dict[str, Any]) -> Interpret:
    """The interpreter `submit_upload` takes: these options for any file."""

    def interpret(form: ParsedForm) -> tuple[Kind, bool, TranscribeOptions]:
        return media_kind(form), True, make_options(values)

    return interpret


def whisper_json(t: Transcript) -> dict[str, Any]:
    """openai-whisper's result dict, which whisper-asr-webservice returns."""
    segments = []
    for s in t.segments:
        seg = whisper_segment(s)
        if s.words:
            seg["words"] = [w.model_dump() for w in s.words]
        segments.append(seg)
    return {"text": t.text, "segments": segments, "language": t.language}


def as_file(t: Transcript, output: str, filename: str) -> Response:
    if output == "json":
        body, media_type = json.dumps(whisper_json(t)), "application/json"
    elif output == "txt":  # a line per segment, as `whisper --output_format txt` writes
        body, media_type = "".join(s.text.strip() + "\n" for s in t.segments), "text/plain; charset=utf-8"
    else:
        body, media_type = render(t, output)
    headers = {"Asr-Engine": ENGINE, "Content-Disposition": f'attachment; filename="{filename}.{output}"'}
    return Response(body, media_type=media_type, headers=headers)


async def _transcribe(
    st: GatewayState, request: Request, principal: Principal, values: dict[str, Any], encode: bool
) -> tuple[Transcript, ParsedForm]:
    rec, form = await submit_upload(
        st, request, principal, _options(values), file_field=FILE_FIELD, file_prefix=_prefix(encode)
    )
    return await transcript_within(st, rec, st.settings.sync_timeout), form


@router.post("/asr", openapi_extra=form_docs.audio_file_form(form_docs.MEDIA))
async def asr(
    request: Request,
    st: State,
    principal: UrlUser,
    task: Literal["transcribe", "translate"] = "transcribe",
    language: str | None = None,
    initial_prompt: str | None = None,
    encode: Encode = True,
    output: Output = "txt",
    word_timestamps: bool = False,
    vad_filter: bool = False,
    diarize: Annotated[
        bool, Query(description="speaker labels (SPEAKER_00 …): only where the fleet serves diarization")
    ] = False,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> Response:
    values: dict[str, Any] = {
        "task": task,
        "language": language or None,
        "initial_prompt": initial_prompt or None,
        "word_timestamps": word_timestamps,
        "vad_filter": vad_filter,
    }
    if diarize:  # refused (422 FEATURE_NOT_SERVED) where no live node serves it, as everywhere
        values |= {"diarize": True, "min_speakers": min_speakers, "max_speakers": max_speakers}
    transcript, form = await _transcribe(st, request, principal, values, encode)
    return as_file(transcript, output, form.filename or "audio")


@router.post("/detect-language", openapi_extra=form_docs.audio_file_form(form_docs.MEDIA))
async def detect_language(request: Request, st: State, principal: UrlUser, encode: Encode = True) -> JSONResponse:
    transcript, _ = await _transcribe(st, request, principal, {"clip_s": DETECT_S}, encode)
    code = transcript.language or "en"
    return JSONResponse(
        {
            "detected_language": language_name(code),
            "language_code": code,
            "confidence": transcript.language_probability,
        }
    )
