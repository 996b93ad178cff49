"""Render a diarized transcript: WebVTT voice tags, SRT and text with a
`SPEAKER_00:` prefix at each change of speaker, Markdown with a paragraph
per turn, JSON, and NIST RTTM.

Pure functions of the stored `DiarizedTranscript`, like `schemas.formats`.
The unit is a run: consecutive words of one speaker within a segment, so a
Whisper segment that spans a change of speaker is split where it changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.diarization import DiarizedTranscript, SpeakerSegment
from schemas.formats import MEDIA_TYPES as PLAIN_MEDIA_TYPES
from schemas.formats import _timestamp, render_with

MEDIA_TYPES = {**PLAIN_MEDIA_TYPES, "rttm": "text/x-rttm; charset=utf-8"}
UNKNOWN = "UNKNOWN"  # a word no turn came near (an engine that heard no speech)


@dataclass(frozen=True)
class Run:
    start: float
    end: float
    speaker: str
    text: str


def _segment_runs(seg: SpeakerSegment) -> list[Run]:
    if not seg.words:
        return [Run(seg.start, seg.end, seg.speaker or UNKNOWN, seg.text.strip())]
    runs: list[Run] = []
    for w in seg.words:
        speaker = w.speaker or UNKNOWN
        if runs and runs[-1].speaker == speaker:
            last = runs[-1]
            runs[-1] = Run(last.start, w.end, speaker, last.text + w.word)
        else:
            runs.append(Run(w.start, w.end, speaker, w.word))
    return [Run(r.start, r.end, r.speaker, r.text.strip()) for r in runs if r.text.strip()]


def runs(t: DiarizedTranscript) -> list[Run]:
    return [r for seg in t.segments for r in _segment_runs(seg)]


def turns_of_runs(t: DiarizedTranscript) -> list[Run]:
    """Consecutive runs of one speaker joined: what a reader calls a turn."""
    joined: list[Run] = []
    for r in runs(t):
        if joined and joined[-1].speaker == r.speaker:
            last = joined[-1]
            joined[-1] = Run(last.start, r.end, r.speaker, f"{last.text} {r.text}")
        else:
            joined.append(r)
    return joined


def _prefixed(rs: list[Run]) -> list[str]:
    """Each run's text, with `SPEAKER_nn: ` where the speaker changes."""
    out, previous = [], None
    for r in rs:
        out.append(r.text if r.speaker == previous else f"{r.speaker}: {r.text}")
        previous = r.speaker
    return out


def to_text(t: DiarizedTranscript) -> str:
    return "\n".join(f"{r.speaker}: {r.text}" for r in turns_of_runs(t)) + "\n"


def to_srt(t: DiarizedTranscript) -> str:
    rs = runs(t)
    blocks = [
        f"{i}\n{_timestamp(r.start, ',')} --> {_timestamp(r.end, ',')}\n{text}\n"
        for i, (r, text) in enumerate(zip(rs, _prefixed(rs), strict=True), start=1)
    ]
    return "\n".join(blocks)


def to_tsv(t: DiarizedTranscript) -> str:
    """Whisper's TSV (`start end text`, milliseconds), each run a line and
    its text prefixed `SPEAKER_nn: ` where the speaker changes, as in SRT."""
    rs = runs(t)
    lines = ["start\tend\ttext"]
    lines += [
        f"{round(r.start * 1000)}\t{round(r.end * 1000)}\t{text.strip().replace(chr(9), ' ')}"
        for r, text in zip(rs, _prefixed(rs), strict=True)
    ]
    return "\n".join(lines) + "\n"


def to_vtt(t: DiarizedTranscript) -> str:
    blocks = [f"{_timestamp(r.start, '.')} --> {_timestamp(r.end, '.')}\n<v {r.speaker}>{r.text}\n" for r in runs(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_json(t: DiarizedTranscript) -> str:
    return t.model_dump_json(exclude_none=True)


def to_markdown(t: DiarizedTranscript) -> str:
    facts = [f"- duration: {t.duration:.1f} s", f"- diarization: {t.diarization_engine}"]
    facts += [f"- {s.speaker}: {s.total_s:.1f} s" for s in t.speakers]
    paragraphs = [f"**{r.speaker}** [{_timestamp(r.start, '.')[:8]}]: {r.text}" for r in turns_of_runs(t)]
    return "# Transcript\n\n" + "\n".join(facts) + "\n\n" + "\n\n".join(paragraphs) + "\n"


def to_rttm(t: DiarizedTranscript, file_id: str = "audio") -> str:
    """One `SPEAKER` line per turn: type, file, channel 1, onset, duration,
    <NA> <NA>, speaker, <NA> <NA> (NIST RTTM, as pyannote and dscore read it)."""
    lines = [
        f"SPEAKER {file_id} 1 {turn.start:.3f} {turn.end - turn.start:.3f} <NA> <NA> {turn.speaker} <NA> <NA>"
        for turn in t.turns
    ]
    return "".join(line + "\n" for line in lines)


# The plain formats' names, plus RTTM (which only a diarized transcript has).
RENDERERS: dict[str, Callable[[DiarizedTranscript], str]] = {
    **dict.fromkeys(("text", "txt"), to_text),
    **{"json": to_json, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv, "md": to_markdown, "rttm": to_rttm},
}


def render(t: DiarizedTranscript, fmt: str) -> tuple[str, str]:
    """Returns (body, media type); an unknown format is the same InvalidInput
    the plain renderer raises."""
    return render_with(RENDERERS, t, fmt, MEDIA_TYPES)
