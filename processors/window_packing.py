"""Window packing: several short clips laid end to end in one 30 s window.

On a CPU the encoder is most of a transcription's cost and it runs a whole
30 s window whatever the clip's length, batched or not: a 7 s clip pays for
30 s. Packing lays the clips of several jobs (same decode settings) in one
window, separated by `gap_s` of silence, transcribes that window once with
word timestamps and gives each clip back the words whose midpoint lies in
its span, their times made relative to the clip's own start. The encoder
then runs once per two to four clips (2.5 on clips of 5–10 s) instead of
once per clip.

This module only lays out and splits back; it knows neither faster-whisper
nor the batcher (processors/whisper_engine.py brings both together).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.results import Segment, Word

SAMPLE_RATE = 16_000
WINDOW_S = 30.0  # Whisper's window
GAP_S = 1.0  # silence between two clips: long enough for Whisper to end a segment in it
FRAMES_PER_S = 100  # Whisper's mel frames, the unit of a segment's `seek`
MAX_CLIP_S = 15.0  # longer clips gain little from sharing a window and go alone


@dataclass(frozen=True)
class Span:
    """Where one clip lies in the packed audio, in seconds."""

    start: float
    end: float


@dataclass(frozen=True)
class Packed:
    """One window's audio and, per clip in it (in the group's order), its span."""

    audio: np.ndarray
    spans: list[Span]


def groups(lengths: Sequence[int], *, window_s: float = WINDOW_S, gap_s: float = GAP_S) -> list[list[int]]:
    """Indices of the clips, grouped into windows: first fit, longest first,
    so a batch of clips fills as few windows as it can. Each group lists
    its clips in their original order (the layout is then stable)."""
    budget, gap = window_s * SAMPLE_RATE, gap_s * SAMPLE_RATE
    bins: list[list[int]] = []
    used: list[float] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, load in enumerate(used):
            if load + gap + lengths[i] <= budget:
                bins[b].append(i)
                used[b] = load + gap + lengths[i]
                break
        else:
            bins.append([i])
            used.append(float(lengths[i]))
    return [sorted(b) for b in bins]


def lay_out(clips: Sequence[np.ndarray], *, gap_s: float = GAP_S) -> Packed:
    """The clips end to end with `gap_s` of zeros between two of them."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = []
    spans: list[Span] = []
    pos = 0
    for clip in clips:
        if parts:
            parts.append(gap)
            pos += len(gap)
        parts.append(clip.astype(np.float32, copy=False))
        spans.append(Span(pos / SAMPLE_RATE, (pos + len(clip)) / SAMPLE_RATE))
        pos += len(clip)
    return Packed(np.concatenate(parts), spans)


def owner(spans: Sequence[Span], t: float) -> int:
    """The clip a moment belongs to: the one whose span holds it, else (in a
    gap, or past the end) the nearest one."""
    i = bisect.bisect_right([s.start for s in spans], t) - 1
    if i < 0:
        return 0
    if t <= spans[i].end or i + 1 == len(spans):
        return i
    return i if t - spans[i].end <= spans[i + 1].start - t else i + 1


def split_back(
    segments: Sequence[Segment], spans: Sequence[Span], *, tokenize: Callable[[str], list[int]]
) -> list[list[Segment]]:
    """Each clip's segments, their times relative to the clip's own start.

    A segment goes to the clip that owns its words' midpoints; one whose
    words fall in two clips (it ran across a gap) is cut between them, and
    each piece's text and tokens are its own words' (`tokenize` encodes a
    piece's text, as the decoder would have). Segments keep their ids in
    order per clip; the caller drops words it was not asked for."""
    per_clip: list[list[Segment]] = [[] for _ in spans]
    for seg in segments:
        for i, piece in _pieces(seg, spans, tokenize):
            per_clip[i].append(piece.model_copy(update={"id": len(per_clip[i])}))
    return per_clip


def _pieces(seg: Segment, spans: Sequence[Span], tokenize: Callable[[str], list[int]]) -> list[tuple[int, Segment]]:
    """The segment cut where its words change clip, each piece shifted to its clip."""
    if not seg.words:
        i = owner(spans, (seg.start + seg.end) / 2)
        return [(i, _shifted(seg, spans[i], seg.start, seg.end, None))]
    runs: list[tuple[int, list[Word]]] = []
    for w in seg.words:
        i = owner(spans, (w.start + w.end) / 2)
        if runs and runs[-1][0] == i:
            runs[-1][1].append(w)
        else:
            runs.append((i, [w]))
    if len(runs) == 1:
        i = runs[0][0]
        return [(i, _shifted(seg, spans[i], seg.start, seg.end, seg.words))]
    pieces = []
    for i, words in runs:
        text = "".join(w.word for w in words)
        piece = seg.model_copy(update={"text": text, "tokens": tokenize(text)})
        pieces.append((i, _shifted(piece, spans[i], words[0].start, words[-1].end, words)))
    return pieces


def _shifted(seg: Segment, span: Span, start: float, end: float, words: list[Word] | None) -> Segment:
    """Times relative to the clip's start, kept inside the clip."""
    length = span.end - span.start

    def at(t: float) -> float:
        return min(max(t - span.start, 0.0), length)

    return seg.model_copy(
        update={
            "seek": None if seg.seek is None else max(0, seg.seek - round(span.start * FRAMES_PER_S)),
            "start": at(start),
            "end": at(end),
            "words": [w.model_copy(update={"start": at(w.start), "end": at(w.end)}) for w in words]
            if words is not None
            else None,
        }
    )
