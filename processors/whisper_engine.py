"""faster-whisper, loaded once per process, shared by the node's workers.

Device-agnostic: the GPU node passes cuda/float16, the CPU node cpu/int8.
CTranslate2 runs several transcriptions at once on one model (`num_workers`),
so `GPUBUS_NODE_CONCURRENCY` jobs share one copy of the weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from processors import model_paths
from schemas.errors import JobCancelled
from schemas.jobs import TranscribeOptions
from schemas.results import Segment, Transcript, Word

log = logging.getLogger("gpubus.processors.whisper")

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class EngineConfig:
    model: str | None
    device: str  # "cpu" or "cuda"
    compute_type: str  # "int8", "float16", ...
    workers: int = 1
    cpu_threads: int = 0
    batch_size: int = 0  # >0: BatchedInferencePipeline (GPU nodes)


class WhisperEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.cfg = cfg
        self.model_name, load_path = model_paths.resolve(cfg.model)
        t0 = time.monotonic()
        self._model = WhisperModel(
            load_path,
            device=cfg.device,
            compute_type=cfg.compute_type,
            num_workers=cfg.workers,
            cpu_threads=cfg.cpu_threads,
            local_files_only=True,
        )
        self._batched = BatchedInferencePipeline(self._model) if cfg.batch_size > 0 else None
        self.load_seconds = time.monotonic() - t0
        log.info(
            "loaded whisper %s on %s/%s in %.2fs", self.model_name, cfg.device, cfg.compute_type, self.load_seconds
        )

    @property
    def english_only(self) -> bool:
        return not self._model.model.is_multilingual

    def transcribe(
        self,
        audio: np.ndarray,
        opts: TranscribeOptions,
        *,
        on_segment: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        kwargs = dict(
            language=opts.language or ("en" if self.english_only else None),
            task=opts.task,
            beam_size=opts.beam_size,
            temperature=opts.temperature,
            word_timestamps=opts.word_timestamps,
            vad_filter=opts.vad_filter,
            initial_prompt=opts.initial_prompt,
        )
        if self._batched is not None:
            segments_iter, info = self._batched.transcribe(audio, batch_size=self.cfg.batch_size, **kwargs)
        else:
            segments_iter, info = self._model.transcribe(audio, **kwargs)
        segments: list[Segment] = []
        for seg in segments_iter:  # decoding happens lazily, segment by segment
            if cancelled.is_set():
                raise JobCancelled()
            words = (
                [Word(start=w.start, end=w.end, word=w.word, probability=w.probability) for w in seg.words]
                if opts.word_timestamps and seg.words
                else None
            )
            segments.append(Segment(id=len(segments), start=seg.start, end=seg.end, text=seg.text, words=words))
            on_segment(min(seg.end, duration), duration)
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            language_probability=info.language_probability,
            duration=duration,
            segments=segments,
            task=opts.task,
            model=self.model_name,
            device=self.cfg.device,
        )
