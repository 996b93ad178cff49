"""Audio and video jobs: decode, transcribe, summarise."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from processors import audio_decode
from processors.whisper_engine import WhisperEngine
from schemas.errors import INPUT_MISSING, JobFailed
from schemas.jobs import JobMessage, ResultSummary
from schemas.names import Kind, Lane
from schemas.processing import NOTHING_STAGED, Input, JobOutput, ProgressFn, Staging

MODEL_NOT_SERVED = "MODEL_NOT_SERVED"
PREPARED_AUDIO = ".gpubus-decoded.f32"  # 16 kHz mono float32 samples, written by `prepare`


class TranscriptionProcessor:
    kinds = frozenset({Kind.AUDIO.value, Kind.VIDEO.value})
    lanes = frozenset(Lane)
    inputs = frozenset({Input.FILE})

    def __init__(self, engine: WhisperEngine, *, node_id: str) -> None:
        self.engine = engine
        self.node_id = node_id
        self.device = engine.cfg.device

    @property
    def models(self) -> list[str]:
        return [self.engine.model_name]

    def staging(self, job: JobMessage) -> Staging:
        """Only the staged upload, which the node fetches for every job."""
        return NOTHING_STAGED

    def _check_model(self, job: JobMessage) -> None:
        wanted = job.options.model
        if wanted and wanted != self.engine.model_name:
            raise JobFailed(MODEL_NOT_SERVED, f"this node serves {self.engine.model_name}, not {wanted}")

    def prepare(self, job: JobMessage, input_path: Path, work_dir: Path) -> None:
        """Decode ahead of the engine (schemas/processing.Prepares): the
        samples wait in the job's private dir, not in memory."""
        self._check_model(job)
        audio_decode.decode(input_path).tofile(work_dir / PREPARED_AUDIO)

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        if input_path is None:
            raise JobFailed(INPUT_MISSING, f"a {job.kind} job needs a staged file")
        self._check_model(job)
        t0 = time.monotonic()
        prepared = work_dir / PREPARED_AUDIO if work_dir is not None else None
        if prepared is not None and prepared.exists():
            audio = np.fromfile(prepared, dtype=np.float32)
        else:
            audio = audio_decode.decode(input_path)
        if job.options.clip_s is not None:  # only the first clip_s seconds (language detection)
            audio = audio[: int(job.options.clip_s * audio_decode.SAMPLE_RATE)]
        progress(0.0, len(audio) / audio_decode.SAMPLE_RATE)
        transcript = self.engine.transcribe(audio, job.options, on_segment=progress, cancelled=cancelled)
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
            ),
        )
