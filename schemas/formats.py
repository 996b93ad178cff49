"""Render a stored transcript as text, SRT, WebVTT, TSV, JSON or Markdown.

Pure functions of the transcript, so the gateway renders every format from the
one stored JSON and nodes never store more than one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from schemas.diarization import DiarizedTranscript
from schemas.errors import InvalidInput
from schemas.results import Segment, Transcript

R = TypeVar("R")

MEDIA_TYPES = {
    "json": "application/json",
    "text": "text/plain; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "md": "text/markdown; charset=utf-8",
}


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_text(t: Transcript) -> str:
    return t.text.strip() + "\n"


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(t: Transcript) -> str:
    """Whisper's own TSV (`whisper --output_format tsv`, whisper-asr-webservice's
    `output=tsv`): a `start end text` header, then one line per segment with
    times in integer milliseconds (no decimal separator to get wrong)."""
    lines = ["start\tend\ttext"]
    lines += [
        f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{s.text.strip().replace(chr(9), ' ')}" for s in t.segments
    ]
    return "\n".join(lines) + "\n"


def whisper_segment(s: Segment) -> dict[str, Any]:
    """A segment as openai-whisper's result has it, which OpenAI's
    verbose_json and whisper-asr-webservice's JSON both copy."""
    return {
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


def to_json(t: Transcript) -> str:
    return t.model_dump_json(exclude_none=True)


def to_markdown(t: Transcript) -> str:
    facts = [f"- duration: {t.duration:.1f} s"]
    if t.language:
        facts.append(f"- language: {t.language}")
    if t.model:
        facts.append(f"- model: {t.model} on {t.device or '?'}")
    lines = [f"**[{_timestamp(s.start, '.')[:8]}]** {s.text.strip()}" for s in t.segments]
    return "# Transcript\n\n" + "\n".join(facts) + "\n\n" + "\n\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "json": to_json,
    "text": to_text,
    "txt": to_text,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
    "md": to_markdown,
}


def render_with(
    renderers: Mapping[str, Callable[[R], str]], result: R, fmt: str, media_types: Mapping[str, str] = MEDIA_TYPES
) -> tuple[str, str]:
    """(body, media type) of `result` in `fmt`, by one of `renderers`: every
    result kind names its own formats, all refuse an unknown one alike."""
    try:
        return renderers[fmt](result), media_types[fmt]
    except KeyError:
        raise InvalidInput(f"unknown format {fmt!r}; use one of {sorted(renderers)}") from None


def render(t: Transcript, fmt: str) -> tuple[str, str]:
    """Returns (body, media type); a diarized transcript in its speaker-aware
    formats (RTTM too), so every endpoint that renders transcripts shows speakers."""
    if isinstance(t, DiarizedTranscript):
        from schemas import diarized_formats  # it builds on this module

        return diarized_formats.render(t, fmt)
    return render_with(RENDERERS, t, fmt)
