"""The Whisper engine in-process, with the real offline model: the batched
(GPU-node) path run on the CPU, options, the OOM retry, a missing model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from processors import audio_decode, gpu_memory, model_paths
from processors.whisper_engine import UNSUPPORTED_LANGUAGE, EngineConfig, WhisperEngine, fixed_chunks
from schemas.errors import JobFailed, JobRetryable
from schemas.events import TextSegment
from schemas.jobs import TranscribeOptions
from tests.harness import TESTDATA, expected_text, words

pytestmark = pytest.mark.timeout(300)

OOM = "CUDA failed with error out of memory"


@pytest.fixture(scope="module")
def batched() -> WhisperEngine:
    """The GPU node's configuration (batched pipeline), on the CPU."""
    return WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8", batch_size=4))


@pytest.fixture(scope="module")
def long_audio():
    return audio_decode.decode(TESTDATA / "long.wav")


def run(engine: WhisperEngine, audio, on_segment=lambda d, t, segment=None: None, **opts):
    return engine.transcribe(audio, TranscribeOptions(**opts), on_segment=on_segment, cancelled=threading.Event())


def test_fixed_chunks_cover_the_whole_file():
    assert fixed_chunks(76.5) == [
        {"start": 0.0, "end": 30.0},
        {"start": 30.0, "end": 60.0},
        {"start": 60.0, "end": 76.5},
    ]
    assert fixed_chunks(12.0) == [{"start": 0.0, "end": 12.0}]


def test_batched_pipeline_without_vad_transcribes_all_of_a_long_file(batched, long_audio):
    # Given 76 s of speech (longer than one 30 s window) and the VAD off
    seen: list[float] = []
    pieces: list[TextSegment] = []

    def on_segment(done: float, total: float, segment: TextSegment | None = None) -> None:
        seen.append(done / total)
        pieces.append(segment)

    t = run(batched, long_audio, on_segment=on_segment)
    # Then every window is decoded, progress rises to the end, and the text matches
    assert t.segments[-1].end > 70 and t.duration == pytest.approx(76.57, abs=0.1)
    assert seen == sorted(seen) and seen[-1] > 0.9
    # And each segment was handed over with its text as it was decoded
    assert [(p.index, p.start, p.end, p.text) for p in pieces] == [(s.id, s.start, s.end, s.text) for s in t.segments]
    assert len(words(t.text) & words(expected_text("long"))) >= 20, t.text
    assert t.language == "en" and t.language_probability == 1.0


def test_vad_filter_runs_offline_from_the_packaged_onnx_model(batched, long_audio):
    import faster_whisper

    # The silero VAD ships inside faster-whisper; nothing is fetched
    assert (Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx").is_file()
    t = run(batched, long_audio, vad_filter=True)
    assert "remote workers" in t.text.lower()


def test_word_timestamps_are_ordered_and_inside_their_segment(batched):
    audio = audio_decode.decode(TESTDATA / "hello.wav")
    t = run(batched, audio, word_timestamps=True, initial_prompt="Hello world. A transcription test.")
    ws = [w for s in t.segments for w in (s.words or [])]
    assert len(ws) >= 10 and all(w.start <= w.end for w in ws)
    assert [w.start for w in ws] == sorted(w.start for w in ws)
    assert "weather" in " ".join(w.word for w in ws).lower()


def test_english_only_model_refuses_another_language(batched):
    audio = audio_decode.decode(TESTDATA / "hello.wav")
    with pytest.raises(JobFailed) as e:
        run(batched, audio, language="de")
    assert e.value.code == UNSUPPORTED_LANGUAGE


def test_english_only_model_translating_english_gives_the_transcript(batched):
    audio = audio_decode.decode(TESTDATA / "hello.wav")
    t = run(batched, audio, task="translate")
    assert t.task == "translate" and "weather" in t.text.lower()


def test_cuda_oom_is_recognised_from_real_exception_types():
    assert gpu_memory.is_cuda_oom(RuntimeError(OOM))
    assert gpu_memory.is_cuda_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))
    OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})  # torch.cuda's name, torch not installed
    assert gpu_memory.is_cuda_oom(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not gpu_memory.is_cuda_oom(RuntimeError("CUDA failed with error invalid device ordinal"))
    assert not gpu_memory.is_cuda_oom(MemoryError())
    assert not gpu_memory.is_cuda_oom(ValueError("out of memory"))


def test_oom_mid_job_retries_once_with_a_smaller_batch(batched, long_audio):
    # Given the GPU runs out of memory while the first attempt is decoding
    batches: list[int] = []
    real_once = batched._transcribe_once

    def spy(audio, opts, kwargs, batch_size, on_segment, cancelled):
        batches.append(batch_size)
        return real_once(audio, opts, kwargs, batch_size, on_segment, cancelled)

    raised = []

    def on_segment(done: float, total: float, segment: TextSegment | None = None) -> None:
        if not raised:
            raised.append(True)
            raise RuntimeError(OOM)

    batched._transcribe_once = spy
    try:
        t = run(batched, long_audio, on_segment=on_segment)
    finally:
        del batched._transcribe_once
    # Then the job is decoded again at half the batch and succeeds
    assert batches == [4, 2]
    assert "remote workers" in t.text.lower()


def test_second_oom_hands_the_job_back(batched):
    audio = audio_decode.decode(TESTDATA / "hello.wav")

    def always_oom(done: float, total: float, segment: TextSegment | None = None) -> None:
        raise RuntimeError(OOM)

    with pytest.raises(JobRetryable) as e:
        run(batched, audio, on_segment=always_oom)
    assert e.value.code == gpu_memory.GPU_OUT_OF_MEMORY


def test_other_errors_are_not_retried():
    calls: list[int] = []

    def boom(batch: int) -> None:
        calls.append(batch)
        raise RuntimeError("CUDA failed with error invalid argument")

    with pytest.raises(RuntimeError):
        gpu_memory.with_oom_retry(boom, 8)
    assert calls == [8]


def test_missing_model_fails_clearly_without_downloading():
    with pytest.raises(model_paths.ModelUnavailable) as e:
        WhisperEngine(EngineConfig(model="large-v3", device="cpu", compute_type="int8"))
    assert "large-v3" in e.value.message and "not installed" in e.value.message
