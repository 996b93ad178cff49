"""Audio and video jobs: decode, transcribe, diarize if asked, summarise."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from processors import audio_decode
from processors.diarization import DiarizationUnavailable, Diarizer, diarize_transcript
from processors.whisper_engine import WhisperEngine
from schemas.diarization import DIARIZATION, DiarizedTranscript
from schemas.errors import INPUT_MISSING, JobCancelled, JobFailed, JobRetryable
from schemas.events import TextSegment
from schemas.jobs import JobMessage, ResultSummary, StageSummary
from schemas.names import Kind, Lane
from schemas.processing import NOTHING_STAGED, Input, JobOutput, Phase, ProgressFn, Staging
from schemas.results import Transcript

MODEL_NOT_SERVED = "MODEL_NOT_SERVED"
PREPARED_AUDIO = ".gpubus-decoded.f32"  # 16 kHz mono float32 samples, written by `prepare`
DIARIZATION_UNAVAILABLE = DiarizationUnavailable.code
# The phases of a job's progress events (and its record's `phase`).
TRANSCRIBING = "transcribing"
DIARIZING = "diarizing"


class TranscriptionProcessor:
    kinds = frozenset({Kind.AUDIO.value, Kind.VIDEO.value})
    lanes = frozenset(Lane)
    inputs = frozenset({Input.FILE})

    def __init__(self, engine: WhisperEngine, *, node_id: str, diarizer: Diarizer | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.device = engine.cfg.device
        self.diarizer = diarizer

    @property
    def models(self) -> list[str]:
        return [self.engine.model_name]

    @property
    def features(self) -> dict[str, list[str]]:
        """Diarization, with the engine, while the node has one (schemas/processing.Advertises)."""
        offers = self.diarizer.offers if self.diarizer is not None else []
        return {DIARIZATION: offers} if offers else {}

    def staging(self, job: JobMessage) -> Staging:
        """Only the staged upload, which the node fetches for every job."""
        return NOTHING_STAGED

    def _check_served(self, job: JobMessage) -> None:
        wanted = job.options.model
        if wanted and wanted != self.engine.model_name:
            raise JobFailed(MODEL_NOT_SERVED, f"this node serves {self.engine.model_name}, not {wanted}")
        if job.options.diarize and not self.features:
            # Routing sends such a job only where a node serves it; should it reach this one anyway
            # (a node of the lane without the engine), it goes back for one that has it.
            raise JobRetryable(DIARIZATION_UNAVAILABLE, "this node has no diarization engine", delay_s=5.0)

    def prepare(self, job: JobMessage, input_path: Path, work_dir: Path) -> None:
        """Decode ahead of the engine (schemas/processing.Prepares): the
        samples wait in the job's private dir, not in memory."""
        self._check_served(job)
        audio_decode.decode(input_path).tofile(work_dir / PREPARED_AUDIO)

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        """Whisper, then (with `options.diarize`) who spoke when: two phases
        of progress, transcribing then diarizing."""
        if input_path is None:
            raise JobFailed(INPUT_MISSING, f"a {job.kind} job needs a staged file")
        self._check_served(job)
        t0 = time.monotonic()
        prepared = work_dir / PREPARED_AUDIO if work_dir is not None else None
        if prepared is not None and prepared.exists():
            audio = np.fromfile(prepared, dtype=np.float32)
        else:
            audio = audio_decode.decode(input_path)
        if job.options.clip_s is not None:  # only the first clip_s seconds (language detection)
            audio = audio[: int(job.options.clip_s * audio_decode.SAMPLE_RATE)]
        diarize = job.options.diarize
        transcribing = Phase(TRANSCRIBING, 0, 2 if diarize else 1)
        progress(0.0, len(audio) / audio_decode.SAMPLE_RATE, transcribing)
        # Speakers go on words, so a diarized job has word times whether or not it asked.
        opts = job.options.model_copy(update={"word_timestamps": True}) if diarize else job.options
        transcript: Transcript = self.engine.transcribe(
            audio, opts, on_segment=partial(in_phase, progress, transcribing), cancelled=cancelled
        )
        stages = []
        if diarize:
            transcript, stage = self._diarize(audio, transcript, job, progress, cancelled)
            stages.append(stage)
        elapsed = time.monotonic() - t0
        rtf = elapsed / transcript.duration if transcript.duration > 0 else None
        transcript.node_id = self.node_id
        transcript.processing_s = round(elapsed, 3)
        transcript.real_time_factor = round(rtf, 4) if rtf is not None else None
        return JobOutput(
            result=transcript,
            summary=ResultSummary(
                duration_s=transcript.duration,
                processing_s=elapsed,
                language=transcript.language,
                device=self.device,
                model=self.engine.model_name,
                real_time_factor=rtf,
                stages=stages,
            ),
        )

    def _diarize(
        self,
        audio: np.ndarray,
        transcript: Transcript,
        job: JobMessage,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> tuple[DiarizedTranscript, StageSummary]:
        """The second phase. Its progress calls keep the node's lease alive
        and are where a cancel stops it."""
        assert self.diarizer is not None  # _check_served
        phase = Phase(DIARIZING, 1, 2)
        duration = len(audio) / audio_decode.SAMPLE_RATE

        def step(done: float, total: float) -> None:
            if cancelled.is_set():
                raise JobCancelled()
            progress(done, total, phase)

        step(0.0, duration)
        try:
            engine = self.diarizer.engine()  # loaded by the first job that asks: not part of the step's time
        except DiarizationUnavailable as e:  # another node may have it: hand the job back
            raise JobRetryable(e.code, e.message, delay_s=5.0) from e
        t0 = time.monotonic()
        result = diarize_transcript(engine, audio, transcript, job.options, step)
        elapsed = time.monotonic() - t0
        stage = StageSummary(name=DIARIZATION, engine=engine.name, processing_s=elapsed, media_s=duration)
        return result, stage


def in_phase(
    progress: ProgressFn,
    phase: Phase,
    done: float,
    total: float,
    _phase: Phase | None = None,
    *,
    segment: TextSegment | None = None,
) -> None:
    """The engine's progress (and each finished segment of text) as the job's, in `phase`."""
    progress(done, total, phase, segment=segment)
