"""Speaker diarization: the engine interface, which engine a node runs, and
the labelling of a Whisper transcript with the engine's turns.

Engines only say who spoke when (`Turn`s over 16 kHz audio); words get their
speaker here, by time overlap, so every engine labels transcripts the same
way. Two engines: pyannote.audio where the operator installed it and named a
pipeline (`processors.diarization_pyannote`), otherwise the offline default
that needs nothing downloaded (`processors.diarization_offline`).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors import heap
from schemas.diarization import DiarizedTranscript, DiarizeOptions, SpeakerSegment, SpeakerTotal, SpeakerTurn
from schemas.errors import GpubusError
from schemas.results import Transcript

log = logging.getLogger("gpubus.processors.diarization")

SAMPLE_RATE = 16_000


class DiarizationError(GpubusError):
    """Diarization could not run on this audio."""

    code = "DIARIZATION_FAILED"


class DiarizationUnavailable(DiarizationError):
    """The configured diarization engine or its weights are not on this machine."""

    code = "DIARIZATION_UNAVAILABLE"


class Turn(NamedTuple):
    start: float
    end: float
    speaker: str


# Proof of life from inside an engine: (media seconds done, media seconds in all).
EngineProgress = Callable[[float, float], None]


def no_progress(done_s: float, total_s: float) -> None:
    pass


class DiarizationEngine(Protocol):
    name: str

    def diarize(self, audio: np.ndarray, opts: DiarizeOptions, progress: EngineProgress = no_progress) -> list[Turn]:
        """Turns in time order over 16 kHz mono float32 audio; `progress`
        is called as the work goes (a node renews its lease on it)."""
        ...


class DiarizationSettings(BaseSettings):
    """Built once by the node and passed in (no environment reads elsewhere)."""

    model_config = SettingsConfigDict(env_prefix="GPUBUS_DIARIZATION_")

    enabled: bool = True  # false: the node offers no diarization (a node without the engine)
    model: str | None = None  # a pyannote pipeline: a local directory / config.yaml, or a hub name
    device: str | None = None  # None: the node's own device (cuda on a GPU node)
    allow_download: bool = False  # a hub name is fetched only with this and a token
    hf_token: SecretStr | None = None


class Diarizer:
    """A node's diarization: the engine it offers, named without loading
    it, and loaded by the first job that asks (under a lock), so a node
    never asked to diarize never imports torch. An engine that fails to
    load is offered no more (`offers` is read at every heartbeat)."""

    def __init__(self, name: str, load: Callable[[], DiarizationEngine]) -> None:
        self.name = name
        self._load = load
        self._engine: DiarizationEngine | None = None
        self._lock = threading.Lock()
        self.broken: str | None = None

    @property
    def offers(self) -> list[str]:
        return [] if self.broken else [self.name]

    def engine(self) -> DiarizationEngine:
        with self._lock:
            if self._engine is None:
                if self.broken:
                    raise DiarizationUnavailable(self.broken)
                try:
                    self._engine = self._load()
                except Exception as e:
                    self.broken = f"the {self.name} diarization engine could not be loaded: {e}"
                    log.error("%s; no longer offering diarization", self.broken)
                    raise DiarizationUnavailable(self.broken) from e
                # torch, librosa and numba bring most of a diarizing node's objects: out of later
                # full collections (each job's decode runs one), as the node did after Whisper.
                heap.freeze_loaded(f"the {self.name} diarization engine")
            return self._engine


def _offline_installed() -> bool:
    """resemblyzer (its weights in its wheel), torch and scikit-learn: the `diarize` extra."""
    return all(importlib.util.find_spec(m) is not None for m in ("resemblyzer", "torch", "sklearn"))


def node_diarizer(settings: DiarizationSettings, device: str = "cpu") -> Diarizer | None:
    """What a node offers: pyannote when the operator named a pipeline it
    can load without a download it was not allowed; the offline engine
    otherwise, so a fresh clone diarizes with nothing downloaded; None when
    turned off or the `diarize` extra is not installed."""
    if not settings.enabled:
        return None
    device = settings.device or device
    if settings.model:
        from processors import diarization_pyannote

        if not diarization_pyannote.installed():
            log.warning("GPUBUS_DIARIZATION_MODEL is set but pyannote.audio is not installed; using the offline engine")
        else:
            try:
                checkpoint = diarization_pyannote.checkpoint(settings)
            except DiarizationUnavailable as e:
                log.warning("%s; using the offline engine", e)
            else:
                return Diarizer(
                    diarization_pyannote.engine_name(settings),
                    lambda: diarization_pyannote.PyannoteEngine.load(checkpoint, settings, device),
                )
    if not _offline_installed():
        log.info("no diarization on this node: install the `diarize` extra (pip install 'gpubus[diarize]')")
        return None
    from processors.diarization_offline import OfflineEngine

    return Diarizer(OfflineEngine.name, lambda: OfflineEngine(device=device))


def select_engine(settings: DiarizationSettings) -> DiarizationEngine:
    """The engine a node with these settings runs, loaded now (benchmarks, tests)."""
    diarizer = node_diarizer(settings)
    if diarizer is None:
        raise DiarizationUnavailable("diarization is turned off, or the `diarize` extra is not installed")
    return diarizer.engine()


def speaker_names(turns: Sequence[tuple[float, float, object]]) -> list[Turn]:
    """SPEAKER_00, SPEAKER_01, ... in order of first appearance: engines'
    cluster ids are arbitrary, and stable names make outputs comparable."""
    names: dict[object, str] = {}
    out = []
    for start, end, raw in sorted(turns, key=lambda t: (t[0], t[1])):
        name = names.setdefault(raw, f"SPEAKER_{len(names):02d}")
        out.append(Turn(float(start), float(end), name))
    return out


def merge_turns(turns: Sequence[Turn], max_gap_s: float) -> list[Turn]:
    """One turn per stretch of one speaker: a pause shorter than `max_gap_s`
    inside someone's speech does not start a new turn."""
    merged: list[Turn] = []
    for t in turns:
        if merged and merged[-1].speaker == t.speaker and t.start - merged[-1].end <= max_gap_s:
            merged[-1] = merged[-1]._replace(end=max(merged[-1].end, t.end))
        else:
            merged.append(t)
    return merged


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def speaker_at(start: float, end: float, turns: Sequence[Turn]) -> str | None:
    """The speaker whose turns overlap [start, end] longest; with no overlap
    (a word in a gap the engine heard as silence) the nearest turn's."""
    if not turns:
        return None
    by_speaker: dict[str, float] = {}
    for t in turns:
        by_speaker[t.speaker] = by_speaker.get(t.speaker, 0.0) + _overlap(start, end, t.start, t.end)
    best = max(by_speaker, key=lambda s: by_speaker[s])
    if by_speaker[best] > 0:
        return best
    return min(turns, key=lambda t: max(t.start - end, start - t.end)).speaker


def _label_segment(seg: SpeakerSegment, turns: Sequence[Turn]) -> SpeakerSegment:
    """Words first; the segment takes the speaker of most of its words' time."""
    if not seg.words:
        seg.speaker = speaker_at(seg.start, seg.end, turns)
        return seg
    spoken: dict[str, float] = {}
    for w in seg.words:
        w.speaker = speaker_at(w.start, w.end, turns)
        if w.speaker:
            spoken[w.speaker] = spoken.get(w.speaker, 0.0) + max(w.end - w.start, 1e-3)
    seg.speaker = max(spoken, key=lambda s: spoken[s]) if spoken else None
    return seg


def speaker_totals(turns: Sequence[Turn]) -> list[SpeakerTotal]:
    totals: dict[str, float] = {}
    for t in turns:
        totals[t.speaker] = totals.get(t.speaker, 0.0) + (t.end - t.start)
    return [SpeakerTotal(speaker=s, total_s=round(v, 3)) for s, v in sorted(totals.items())]


def assign_speakers(transcript: Transcript, turns: Sequence[Turn], engine: str) -> DiarizedTranscript:
    """The transcript with a speaker on every word and segment, and each
    speaker's total speaking time (from the turns, not the words: Whisper's
    word times skip the breaths and pauses people count as speaking)."""
    fields = transcript.model_dump()
    segments = [_label_segment(SpeakerSegment.model_validate(s), turns) for s in fields.pop("segments")]
    return DiarizedTranscript(
        **fields,
        segments=segments,
        speakers=speaker_totals(turns),
        diarization_engine=engine,
        turns=[SpeakerTurn(start=round(t.start, 3), end=round(t.end, 3), speaker=t.speaker) for t in turns],
    )


def diarize_transcript(
    engine: DiarizationEngine,
    audio: np.ndarray,
    transcript: Transcript,
    opts: DiarizeOptions,
    progress: EngineProgress = no_progress,
) -> DiarizedTranscript:
    """What a node runs after Whisper when a job asks for `diarize`."""
    return assign_speakers(transcript, engine.diarize(audio, opts, progress), engine.name)
