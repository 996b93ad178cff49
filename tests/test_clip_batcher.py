"""Short clips of different jobs decoded in one batch
(processors/clip_batcher.py, WhisperEngine's clip batch): batches form
when calls overlap, a lone call is not held back, results go to their own
caller, and the transcripts are those of one clip at a time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from processors import audio_decode
from processors.clip_batcher import ClipBatcher
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.errors import JobCancelled
from schemas.jobs import TranscribeOptions
from testkit.transcripts import words
from tests.harness import TESTDATA

NEVER = threading.Event()


def _recording_batcher(max_batch: int, max_wait_s: float, decode_s: float = 0.05):
    seen: list[list[int]] = []

    def decode(key, items):
        seen.append(list(items))
        time.sleep(decode_s)
        return [(key, i * 10) for i in items]

    return ClipBatcher(decode, max_batch=max_batch, max_wait_s=max_wait_s), seen


def test_overlapping_calls_share_batches_and_each_gets_its_own_result():
    # Given a batcher of 4 and 12 calls arriving together
    batcher, seen = _recording_batcher(max_batch=4, max_wait_s=0.02)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: batcher.run("k", i, NEVER), range(12)))
    # Then each caller has its own result, and the calls went in batches of up to 4
    assert results == [("k", i * 10) for i in range(12)]
    assert sorted(i for batch in seen for i in batch) == list(range(12))
    assert max(len(b) for b in seen) == 4 and len(seen) <= 6, seen


def test_a_lone_call_waits_at_most_the_batch_wait():
    # Given an idle batcher whose wait is 5 ms
    batcher, seen = _recording_batcher(max_batch=8, max_wait_s=0.005, decode_s=0.0)
    # When one call comes
    t0 = time.monotonic()
    assert batcher.run("k", 1, NEVER) == ("k", 10)
    # Then it was decoded alone, at once
    assert seen == [[1]] and time.monotonic() - t0 < 0.05


def test_calls_with_other_settings_never_share_a_batch():
    batcher, seen = _recording_batcher(max_batch=8, max_wait_s=0.02)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: batcher.run("ab"[i % 2], i, NEVER), range(8)))
    assert results == [("ab"[i % 2], i * 10) for i in range(8)]
    assert all(len({i % 2 for i in batch}) == 1 for batch in seen), seen


def test_a_failed_batch_fails_each_of_its_calls_and_the_next_batch_runs():
    calls = []

    def decode(key, items):
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("engine fault")
        return items

    batcher = ClipBatcher(decode, max_batch=4, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="engine fault"):
        batcher.run("k", 1, NEVER)
    assert batcher.run("k", 2, NEVER) == 2


def test_a_call_cancelled_while_it_waits_leaves_the_queue():
    # Given a batch being decoded, and a call waiting behind it
    started, release = threading.Event(), threading.Event()

    def decode(key, items):
        started.set()
        release.wait(5)
        return items

    batcher = ClipBatcher(decode, max_batch=1, max_wait_s=0.0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run, "k", 1, NEVER)
        started.wait(5)
        cancel = threading.Event()
        waiting = pool.submit(batcher.run, "k", 2, cancel)
        time.sleep(0.05)
        # When its job is cancelled
        cancel.set()
        # Then it ends with JobCancelled without being decoded
        with pytest.raises(JobCancelled):
            waiting.result(timeout=5)
        release.set()
        assert first.result(timeout=5) == 1
    assert batcher.calls == 1


def test_a_batch_waits_for_the_calls_the_node_says_are_coming():
    # Given a batcher told that three more calls are on their way, and a
    # first call whose company comes well after the 5 ms quiet wait
    batcher, seen = _recording_batcher(max_batch=4, max_wait_s=0.005)
    batcher.max_gather_s = 5.0  # bounded, but no bound is reached here
    on_the_way = [3]
    batcher.coming = lambda: on_the_way[0]
    go = threading.Event()

    def late(i: int) -> tuple[str, int]:
        go.wait(5)
        on_the_way[0] -= 1  # it reaches the engine
        return batcher.run("k", i, NEVER)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.run, "k", 0, NEVER)
        others = [pool.submit(late, i) for i in (1, 2, 3)]
        time.sleep(0.1)
        go.set()
        results = [first.result(5)] + [o.result(5) for o in others]
    # Then the first call waited for them: one batch of four
    assert results == [("k", i * 10) for i in range(4)]
    assert [sorted(b) for b in seen] == [[0, 1, 2, 3]]


def test_with_nothing_coming_a_late_call_makes_a_batch_of_its_own():
    # Given the same late company, but no call said to be coming
    batcher, seen = _recording_batcher(max_batch=4, max_wait_s=0.005, decode_s=0.0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run, "k", 0, NEVER)
        assert first.result(5) == ("k", 0)
        assert pool.submit(batcher.run, "k", 1, NEVER).result(5) == ("k", 10)
    # Then the first was not held back for it
    assert seen == [[0], [1]]


def test_a_batch_stops_waiting_for_calls_that_never_come_after_its_gather_bound():
    # Given a node that says a call is coming, which never does
    batcher, seen = _recording_batcher(max_batch=4, max_wait_s=0.001, decode_s=0.0)
    batcher.max_gather_s = 0.05
    batcher.coming = lambda: 1
    # Then a lone call is still decoded, alone
    assert batcher.run("k", 7, NEVER) == ("k", 70)
    assert seen == [[7]]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Six clips of 5–9 s cut from the recorded speech."""
    speech = audio_decode.decode(TESTDATA / "long.wav")
    cuts, pos = [], 0
    for seconds in (5, 7, 9, 6, 8, 5):
        n = seconds * audio_decode.SAMPLE_RATE
        cuts.append(speech[pos : pos + n])
        pos += n
    return cuts


def test_batched_clips_transcribe_as_one_clip_at_a_time(clips):
    # Given the offline model, once decoding each clip alone and once with a clip batch of 6
    opts = TranscribeOptions()
    alone = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
    batched = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8", workers=6, clip_batch=6))
    expected = [alone.transcribe(c, opts, on_segment=lambda *_, **__: None, cancelled=NEVER) for c in clips]
    # When the six arrive together
    with ThreadPoolExecutor(6) as pool:
        got = list(
            pool.map(lambda c: batched.transcribe(c, opts, on_segment=lambda *_, **__: None, cancelled=NEVER), clips)
        )
    # Then they were decoded in fewer batches than clips, each transcript its own clip's
    assert batched.batcher is not None and batched.batcher.calls == 6 and batched.batcher.batches < 6
    for e, g, c in zip(expected, got, clips, strict=True):
        assert words(g.text) == words(e.text), (g.text, e.text)
        assert g.duration == pytest.approx(len(c) / audio_decode.SAMPLE_RATE)
        assert all(0 <= s.start <= s.end <= g.duration + 0.5 for s in g.segments), g.segments
        assert all(s.avg_logprob < 0 and s.tokens for s in g.segments)
