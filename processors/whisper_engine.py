"""faster-whisper, loaded once per process, shared by the node's workers.

Device-agnostic: the GPU node passes cuda/float16 and a batch size (faster-
whisper's `BatchedInferencePipeline`), the CPU node cpu/int8 and sequential
decoding. CTranslate2 runs several transcriptions at once on one model
(`num_workers`), so `GPUBUS_NODE_CONCURRENCY` jobs share one copy of the
weights.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from processors import gpu_memory, model_paths, window_packing
from processors.clip_batcher import ClipBatcher
from schemas.errors import UNSUPPORTED_LANGUAGE, JobCancelled, JobFailed
from schemas.events import TextSegment
from schemas.jobs import TranscribeOptions
from schemas.languages import is_known, normalized
from schemas.processing import ClipCounts, ProgressFn
from schemas.results import Segment, Transcript, Word

log = logging.getLogger("gpubus.processors.whisper")

SAMPLE_RATE = 16_000
CHUNK_S = 30  # Whisper's window; the batched pipeline decodes one chunk per batch row


@dataclass(frozen=True)
class EngineConfig:
    model: str | None
    device: str  # "cpu" or "cuda"
    compute_type: str  # "int8", "float16", ...
    workers: int = 1
    cpu_threads: int = 0
    batch_size: int = 0  # >0: BatchedInferencePipeline (GPU nodes)
    # >1: short clips of different jobs decoded as one batch of up to this
    # many (processors/clip_batcher.py); it needs that many jobs in the
    # engine at once (GPUBUS_NODE_CONCURRENCY). 0 or 1: each job alone.
    clip_batch: int = 0
    clip_batch_wait_s: float = 0.005
    # Under load, how long at most a batch waits for clips the node has
    # taken but not yet brought to the engine (processors/clip_batcher.py).
    clip_gather_s: float = 0.25
    # With a clip batch: the gathered clips are packed several to one 30 s
    # window (processors/window_packing.py) instead of one batch row each.
    # For the CPU, whose encoder cost is per window, batched or not.
    clip_pack: bool = False


def fixed_chunks(duration_s: float) -> list[dict[str, float]]:
    """30 s windows over the whole file: the batched pipeline needs chunk
    boundaries, and without the VAD nothing may be skipped."""
    n = max(1, math.ceil(duration_s / CHUNK_S))
    return [{"start": float(i * CHUNK_S), "end": float(min((i + 1) * CHUNK_S, duration_s))} for i in range(n)]


class WhisperEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        from faster_whisper import WhisperModel

        self.cfg = cfg
        self.model_name, load_path = model_paths.resolve(cfg.model)
        t0 = time.monotonic()
        try:
            self._model = WhisperModel(
                load_path,
                device=cfg.device,
                compute_type=cfg.compute_type,
                num_workers=cfg.workers,
                cpu_threads=cfg.cpu_threads,
                local_files_only=True,  # never download weights while serving
            )
        except (OSError, ValueError) as e:
            raise model_paths.not_installed(self.model_name, type(e).__name__) from e
        self.load_seconds = time.monotonic() - t0
        self.batcher: ClipBatcher[np.ndarray, Transcript] | None = (
            ClipBatcher(
                self._decode_packed if cfg.clip_pack else self._decode_clips,
                max_batch=cfg.clip_batch,
                max_wait_s=cfg.clip_batch_wait_s,
                max_gather_s=cfg.clip_gather_s,
            )
            if cfg.clip_batch > 1
            else None
        )
        self.packing = cfg.clip_pack and self.batcher is not None
        self.packed_clips = 0  # clips packed so far, and the windows they took: clips per window is their ratio
        self.packed_windows = 0
        log.info(
            "loaded whisper %s on %s/%s (batch %d) in %.2fs",
            self.model_name,
            cfg.device,
            cfg.compute_type,
            cfg.batch_size,
            self.load_seconds,
        )

    @property
    def english_only(self) -> bool:
        return not self._model.model.is_multilingual

    def _decode_kwargs(self, opts: TranscribeOptions) -> dict[str, Any]:
        """A code Whisper does not know fails the job for good: faster-whisper
        raises a bare ValueError for it on a multilingual model, which would
        be taken for a transient fault, redelivered and fallen back, and it
        ignores the language on an English-only one. An English-only model
        cannot detect or translate: English audio is transcribed (its
        translation to English is the transcript), any other language is
        refused rather than silently transcribed as English."""
        language = normalized(opts.language)
        if not is_known(language):
            raise JobFailed(UNSUPPORTED_LANGUAGE, f"{language!r} is not a language Whisper knows")
        if self.english_only:
            if language not in (None, "en"):
                raise JobFailed(
                    UNSUPPORTED_LANGUAGE, f"model {self.model_name} is English-only; it cannot do language {language!r}"
                )
            language = "en"
        return dict(
            language=language,
            task="transcribe" if self.english_only else opts.task,
            beam_size=opts.beam_size,
            temperature=opts.temperature,
            word_timestamps=opts.word_timestamps,
            vad_filter=opts.vad_filter,
            initial_prompt=opts.initial_prompt,
        )

    def _segments(self, audio: np.ndarray, kwargs: dict[str, Any], batch_size: int):
        if batch_size <= 0:
            return self._model.transcribe(audio, **kwargs)
        from faster_whisper import BatchedInferencePipeline

        # One pipeline per call: it keeps per-transcription state, the model is shared.
        pipeline = BatchedInferencePipeline(self._model)
        if not kwargs["vad_filter"]:
            kwargs = {**kwargs, "clip_timestamps": fixed_chunks(len(audio) / SAMPLE_RATE)}
        return pipeline.transcribe(audio, batch_size=batch_size, **kwargs)

    def transcribe(
        self,
        audio: np.ndarray,
        opts: TranscribeOptions,
        *,
        on_segment: ProgressFn,
        cancelled: threading.Event,
    ) -> Transcript:
        """Each finished segment goes to `on_segment` as it is decoded (its
        text too, for the streamed partial text). On CUDA out-of-memory the job is decoded again with half the batch,
        once; a second OOM raises JobRetryable (see processors.gpu_memory)."""
        kwargs = self._decode_kwargs(opts)
        if self.batcher is not None and self._batchable(audio, kwargs):
            transcript = self.batcher.run(batch_key(kwargs), audio, cancelled)
            for seg in transcript.segments:
                on_segment(min(seg.end, transcript.duration), transcript.duration, segment=text_of(seg))
            return transcript.model_copy(update={"task": opts.task})
        return gpu_memory.with_oom_retry(
            lambda batch: self._transcribe_once(audio, opts, kwargs, batch, on_segment, cancelled),
            self.cfg.batch_size,
        )

    def _transcribe_once(
        self,
        audio: np.ndarray,
        opts: TranscribeOptions,
        kwargs: dict[str, Any],
        batch_size: int,
        on_segment: ProgressFn,
        cancelled: threading.Event,
    ) -> Transcript:
        duration = len(audio) / SAMPLE_RATE
        segments_iter, info = self._segments(audio, kwargs, batch_size)
        segments: list[Segment] = []
        for seg in segments_iter:  # decoding happens lazily, segment by segment
            if cancelled.is_set():
                raise JobCancelled()
            segments.append(to_segment(seg, len(segments), 0.0))
            on_segment(min(seg.end, duration), duration, segment=text_of(segments[-1]))
        return self._transcript(segments, info, duration, opts.task)

    def _transcript(self, segments: list[Segment], info: Any, duration: float, task: str) -> Transcript:
        return Transcript(
            text="".join(s.text for s in segments).strip(),
            language=info.language,
            language_probability=info.language_probability,
            duration=duration,
            segments=segments,
            task=task,
            model=self.model_name,
            device=self.cfg.device,
        )

    # -- short clips of several jobs in one batch ----------------------------

    def _batchable(self, audio: np.ndarray, kwargs: dict[str, Any]) -> bool:
        """One window each, decoded with the same settings. Not with the VAD
        (its speech regions replace the clip bounds the batch is cut by), nor
        with language detection on a multilingual model (the batch would
        share one detected language). Packed clips share one window's text
        too: no per-job prompt (it would speak for the neighbours), and only
        clips short enough to leave room for others."""
        if self.packing:
            fits = len(audio) <= window_packing.MAX_CLIP_S * SAMPLE_RATE and kwargs["initial_prompt"] is None
        else:
            fits = len(audio) <= CHUNK_S * SAMPLE_RATE
        return fits and not kwargs["vad_filter"] and kwargs["language"] is not None

    def _decode_clips(self, key: Hashable, clips: Sequence[np.ndarray]) -> list[Transcript]:
        """The clips end to end, each one window of the batched pipeline
        (`clip_timestamps`), so faster-whisper's own batched decode does the
        work; segments go back to their clip by where they start."""
        from faster_whisper import BatchedInferencePipeline

        kwargs: dict[str, Any] = dict(cast(BatchKey, key))
        offsets = list(np.cumsum([0] + [len(c) for c in clips[:-1]]) / SAMPLE_RATE)
        durations = [len(c) / SAMPLE_RATE for c in clips]
        bounds = [{"start": o, "end": o + d} for o, d in zip(offsets, durations, strict=True)]
        segments_iter, info = BatchedInferencePipeline(self._model).transcribe(
            np.concatenate(clips),
            batch_size=len(clips),
            clip_timestamps=bounds,
            without_timestamps=False,
            **kwargs,
        )
        per_clip: list[list[Segment]] = [[] for _ in clips]
        for seg in segments_iter:
            i = max(0, bisect.bisect_right(offsets, seg.start + 1e-3) - 1)
            per_clip[i].append(to_segment(seg, len(per_clip[i]), offsets[i]))
        return [self._transcript(segs, info, d, kwargs["task"]) for segs, d in zip(per_clip, durations, strict=True)]

    def _decode_packed(self, key: Hashable, clips: Sequence[np.ndarray]) -> list[Transcript | BaseException]:
        """The clips packed into as few windows as fit them, each window
        transcribed once. The windows of one gathering are transcribed at
        the same time: CTranslate2 runs as many calls at once as the engine
        has workers, and one call alone leaves CPU cores idle."""
        kwargs: dict[str, Any] = dict(cast(BatchKey, key))
        windows = window_packing.groups([len(c) for c in clips])

        def window(group: list[int]) -> list[Transcript | BaseException]:
            return self._decode_window([clips[i] for i in group], kwargs)

        if len(windows) == 1:
            done = [window(windows[0])]
        else:
            with ThreadPoolExecutor(len(windows)) as pool:
                done = list(pool.map(window, windows))
        results = {i: t for group, ts in zip(windows, done, strict=True) for i, t in zip(group, ts, strict=True)}
        self.packed_clips += len(clips)
        self.packed_windows += len(windows)
        log.info("packed %d clips into %d windows", len(clips), len(windows))
        return [results[i] for i in range(len(clips))]

    def _decode_window(self, clips: Sequence[np.ndarray], kwargs: dict[str, Any]) -> list[Transcript | BaseException]:
        """One window's clips. A window whose transcription fails is done
        again one clip at a time, so no job fails because of a neighbour;
        so is each clip the window left without a word. One clip tiny.en
        loses itself on can take the whole window's text with it: three
        clips of long.wav came back empty packed, two of them read well
        alone (tests/test_window_packing.py). A clip with a window to
        itself (a lone job) is transcribed as it would be without packing:
        no word timestamps it did not ask for."""
        if len(clips) == 1:
            return [self._solo_or_error(clips[0], kwargs)]
        try:
            packed = self._transcribe_window(clips, kwargs)
        except Exception as e:  # any fault of the shared call: each clip alone
            log.warning("packed window of %d clips failed (%s); decoding them one at a time", len(clips), e)
            return [self._solo_or_error(c, kwargs) for c in clips]
        empty = [i for i, t in enumerate(packed) if not t.text.strip()]
        if empty:
            log.info("packed window of %d clips left %d without words; decoding those alone", len(clips), len(empty))
        return [
            self._solo_or_error(c, kwargs) if i in empty else t
            for i, (t, c) in enumerate(zip(packed, clips, strict=True))
        ]

    def _transcribe_window(self, clips: Sequence[np.ndarray], kwargs: dict[str, Any]) -> list[Transcript]:
        """One window's clips transcribed together: word timestamps always
        (they decide which clip a word belongs to), kept only if asked for."""
        packed = window_packing.lay_out(clips)
        segments_iter, info = self._model.transcribe(packed.audio, **{**kwargs, "word_timestamps": True})
        segments = [to_segment(seg, n, 0.0) for n, seg in enumerate(segments_iter)]
        per_clip = window_packing.split_back(segments, packed.spans, tokenize=self._tokenize)
        if not kwargs["word_timestamps"]:
            per_clip = [[s.model_copy(update={"words": None}) for s in segs] for segs in per_clip]
        return [
            self._transcript(segs, info, len(c) / SAMPLE_RATE, kwargs["task"])
            for segs, c in zip(per_clip, clips, strict=True)
        ]

    def _solo_or_error(self, audio: np.ndarray, kwargs: dict[str, Any]) -> Transcript | BaseException:
        """One clip transcribed alone; its own failure is its result."""
        try:
            segments_iter, info = self._model.transcribe(audio, **kwargs)
            segments = [to_segment(seg, n, 0.0) for n, seg in enumerate(segments_iter)]
            return self._transcript(segments, info, len(audio) / SAMPLE_RATE, kwargs["task"])
        except Exception as e:  # handed to this clip's caller, raised there
            return e

    def expect_from(self, coming: Callable[[], int]) -> None:
        """The node's count of jobs it holds that have not reached the
        engine yet (schemas/processing.Gathers): the clip batch waits for
        them under load."""
        if self.batcher is not None:
            self.batcher.coming = coming

    def clip_counts(self) -> ClipCounts | None:
        """What this engine has gathered so far, for the node's metrics; None
        when it gathers nothing."""
        if self.batcher is None:
            return None
        if self.packing:
            return ClipCounts("pack", self.packed_clips, self.packed_windows)
        return ClipCounts("batch", self.batcher.calls, self.batcher.batches)

    def _tokenize(self, text: str) -> list[int]:
        """Text tokens as the decoder emits them (for a segment cut in two)."""
        return list(self._model.hf_tokenizer.encode(text, add_special_tokens=False).ids)


BatchKey = tuple[tuple[str, Any], ...]


def batch_key(kwargs: dict[str, Any]) -> BatchKey:
    """Jobs decoded in one batch share every decode setting (the VAD is off for all of them)."""
    return tuple(sorted((k, v) for k, v in kwargs.items() if k != "vad_filter"))


def text_of(seg: Segment) -> TextSegment:
    """A finished segment's piece of the text, for the streamed partial text."""
    return TextSegment.of(seg.id, seg.start, seg.end, seg.text)


def to_segment(seg: Any, index: int, offset_s: float) -> Segment:
    """faster-whisper's segment as ours, its times made relative to `offset_s`."""
    words = (
        [
            Word(start=w.start - offset_s, end=w.end - offset_s, word=w.word, probability=w.probability)
            for w in seg.words
        ]
        if seg.words
        else None
    )
    return Segment(
        id=index,
        start=max(0.0, seg.start - offset_s),
        end=max(0.0, seg.end - offset_s),
        text=seg.text,
        words=words,
        seek=seg.seek,
        tokens=list(seg.tokens),
        temperature=seg.temperature,
        avg_logprob=seg.avg_logprob,
        compression_ratio=seg.compression_ratio,
        no_speech_prob=seg.no_speech_prob,
    )
