"""Short clips of different jobs packed into one 30 s window
(processors/window_packing.py, WhisperEngine with `clip_pack`): the layout
fits the window, words go back to their own clip at their own times, and a
packed clip reads as it does transcribed alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from bus import node_host
from bus.metrics import NodeMetrics
from bus.settings import Settings
from processors import audio_decode
from processors.whisper_engine import EngineConfig, WhisperEngine
from processors.window_packing import GAP_S, SAMPLE_RATE, WINDOW_S, Span, groups, lay_out, owner, split_back
from schemas.jobs import TranscribeOptions
from schemas.names import Lane
from schemas.processing import ClipCounts
from schemas.results import Segment, Transcript, Word
from testkit.transcripts import word_error_rate, words
from tests.harness import TESTDATA

NEVER = threading.Event()


def test_groups_fill_few_windows_and_never_overflow_one():
    # Given clips of 10, 10, 10, 5, 5 and 5 s
    lengths = [s * SAMPLE_RATE for s in (10, 10, 10, 5, 5, 5)]
    packed = groups(lengths)
    # Then they fill two windows, each clip once, each window with its gaps within 30 s
    assert len(packed) == 2
    assert sorted(i for g in packed for i in g) == list(range(6))
    for g in packed:
        assert sum(lengths[i] for i in g) + (len(g) - 1) * GAP_S * SAMPLE_RATE <= WINDOW_S * SAMPLE_RATE
        assert g == sorted(g)


def test_a_clip_too_long_to_share_has_a_window_of_its_own():
    assert groups([29 * SAMPLE_RATE, 2 * SAMPLE_RATE]) == [[0], [1]]


def test_lay_out_puts_a_gap_of_silence_between_clips():
    a, b = np.ones(SAMPLE_RATE, np.float32), np.full(2 * SAMPLE_RATE, 0.5, np.float32)
    packed = lay_out([a, b])
    assert packed.spans == [Span(0.0, 1.0), Span(1.0 + GAP_S, 3.0 + GAP_S)]
    assert len(packed.audio) == int((3 + GAP_S) * SAMPLE_RATE)
    assert not packed.audio[SAMPLE_RATE : int((1 + GAP_S) * SAMPLE_RATE)].any()


def test_a_moment_in_a_gap_belongs_to_the_nearer_clip():
    spans = [Span(0.0, 5.0), Span(6.0, 9.0)]
    assert [owner(spans, t) for t in (0.0, 4.9, 5.4, 5.6, 7.0, 12.0)] == [0, 0, 0, 1, 1, 1]


def _word(start: float, end: float, text: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def test_a_segment_across_a_gap_is_cut_and_each_piece_shifted_to_its_clip():
    # Given two clips, 0–5 s and 6–9 s, and one segment whose words run over the gap
    spans = [Span(0.0, 5.0), Span(6.0, 9.0)]
    seg = Segment(
        id=0,
        start=3.0,
        end=8.0,
        text=" hello there general",
        words=[_word(3.0, 3.5, " hello"), _word(4.0, 4.6, " there"), _word(6.5, 7.9, " general")],
        tokens=[1, 2, 3],
        avg_logprob=-0.2,
    )
    tail = Segment(id=1, start=8.0, end=8.8, text=" kenobi", words=None, tokens=[4])
    per_clip = split_back([seg, tail], spans, tokenize=lambda text: [len(w) for w in text.split()])
    # Then the first clip has the words in its span, the second the rest, at its own times
    first, second = per_clip
    assert [(s.id, s.text, s.start, s.end, s.tokens) for s in first] == [(0, " hello there", 3.0, 4.6, [5, 5])]
    assert [w.word for w in first[0].words or []] == [" hello", " there"]
    assert [(s.id, s.text, s.tokens) for s in second] == [(0, " general", [7]), (1, " kenobi", [4])]
    assert second[0].start == pytest.approx(0.5) and second[0].end == pytest.approx(1.9)
    assert [(w.word, w.start, w.end) for w in second[0].words or []] == [
        (" general", pytest.approx(0.5), pytest.approx(1.9))
    ]
    assert second[1].start == pytest.approx(2.0) and second[1].end == pytest.approx(2.8)
    assert first[0].avg_logprob == -0.2


# -- the engine, with the offline model ----------------------------------------


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Three recordings of different sentences (8.3 s, 8.7 s and 7 s of
    long.wav), which fit one window together."""
    long = audio_decode.decode(TESTDATA / "long.wav")
    return [
        audio_decode.decode(TESTDATA / "hello.wav"),
        audio_decode.decode(TESTDATA / "numbers.wav"),
        long[: 7 * SAMPLE_RATE],
    ]


@pytest.fixture(scope="module")
def alone(clips) -> list[Transcript]:
    engine = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
    return [engine.transcribe(c, TranscribeOptions(), on_segment=_ignore, cancelled=NEVER) for c in clips]


def _ignore(*_, **__) -> None:
    return None


def _packing_engine(clips: int = 3) -> WhisperEngine:
    """A packing engine that gathers `clips` clips; it waits long enough for
    all of them to arrive even on a busy machine (what it then does with
    them is under test, not the gathering: tests/test_clip_batcher.py)."""
    cfg = EngineConfig(
        model=None,
        device="cpu",
        compute_type="int8",
        workers=clips,
        clip_batch=clips,
        clip_pack=True,
        clip_batch_wait_s=1.0,
    )
    return WhisperEngine(cfg)


def _together(engine: WhisperEngine, clips: list[np.ndarray], opts: TranscribeOptions) -> list[Transcript]:
    with ThreadPoolExecutor(len(clips)) as pool:
        return list(pool.map(lambda c: engine.transcribe(c, opts, on_segment=_ignore, cancelled=NEVER), clips))


def test_packed_clips_read_as_each_clip_alone_and_keep_their_own_words(clips, alone):
    # Given the packing engine and three clips arriving together
    engine = _packing_engine()
    got = _together(engine, clips, TranscribeOptions())
    # Then they were decoded together, and each transcript is its own clip's:
    # within a word or three of the clip alone (tiny.en hears a word or two
    # differently with other speech in its window), and as close to what
    # was said as the clip alone
    assert engine.batcher is not None and engine.batcher.calls == 3 and engine.batcher.batches < 3
    assert engine.clip_counts() == ClipCounts("pack", 3, 1)  # all three in one window
    said = [(TESTDATA / f"{name}.txt").read_text() for name in ("hello", "numbers")]
    packed_wer = np.mean([word_error_rate(ref, g.text) for ref, g in zip(said, got, strict=False)])
    alone_wer = np.mean([word_error_rate(ref, a.text) for ref, a in zip(said, alone, strict=False)])
    assert packed_wer <= alone_wer + 0.05, (packed_wer, alone_wer)
    for i, (g, a, c) in enumerate(zip(got, alone, clips, strict=True)):
        assert word_error_rate(a.text, g.text) <= 0.25, (g.text, a.text)
        # no word of a neighbour's (longer than a little word like "of") leaked in
        neighbours = {w for j, o in enumerate(alone) if j != i for w in words(o.text) if len(w) > 3} - set(
            words(a.text)
        )
        assert not set(words(g.text)) & neighbours, (g.text, a.text)
        assert g.duration == pytest.approx(len(c) / SAMPLE_RATE)
        assert all(0 <= s.start <= s.end <= g.duration for s in g.segments), g.segments
        assert all(s.words is None and s.tokens and s.avg_logprob is not None for s in g.segments)
        assert [s.id for s in g.segments] == list(range(len(g.segments)))


def test_packed_clips_asked_for_words_get_them_in_their_own_time(clips):
    got = _together(_packing_engine(), clips, TranscribeOptions(word_timestamps=True))
    for g in got:
        ws = [w for s in g.segments for w in s.words or []]
        assert ws and all(0 <= w.start <= w.end <= g.duration for w in ws), ws
        assert words("".join(w.word for w in ws)) == words(g.text)


def test_a_failed_window_falls_back_to_each_clip_alone(clips, alone):
    # Given a packing engine whose packed call fails
    engine = _packing_engine()

    def broken(*_):
        raise RuntimeError("packed call fault")

    engine._transcribe_window = broken
    # When the three clips arrive together
    got = _together(engine, clips, TranscribeOptions())
    # Then every job still gets its own clip's transcript, as if decoded alone
    assert [g.text for g in got] == [a.text for a in alone]


# Three pieces of long.wav (24.2-29.5 s, 36.4-43.0 s, 43.0-48.8 s, in
# samples) that bench.clip_batching's gathering of 16 packed into one
# window: tiny.en loses itself on the first (alone it repeats one word),
# and packed, the window came back without a word for any of the three.
LOST_IN_A_WINDOW = ((386_462, 471_202), (582_212, 688_054), (688_054, 780_069))


def test_clips_a_packed_window_leaves_without_words_are_transcribed_alone():
    # Given three clips whose packed window comes back empty
    long = audio_decode.decode(TESTDATA / "long.wav")
    clips = [long[a:b] for a, b in LOST_IN_A_WINDOW]
    solo = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
    alone = [solo.transcribe(c, TranscribeOptions(), on_segment=_ignore, cancelled=NEVER).text for c in clips]
    # When they arrive together at a packing engine
    engine = _packing_engine()
    got = _together(engine, clips, TranscribeOptions())
    # Then they were packed into one window, and each job has its clip's
    # transcript as read alone, not an empty one
    assert engine.clip_counts() == ClipCounts("pack", 3, 1)
    assert [g.text for g in got] == alone
    assert all(words(t) for t in alone[1:]), alone


def test_a_clip_with_its_own_prompt_or_too_long_is_not_packed(clips):
    engine = _packing_engine()
    opts = TranscribeOptions()
    kwargs = engine._decode_kwargs(opts)
    assert engine._batchable(clips[0], kwargs)
    assert not engine._batchable(np.concatenate(clips[:2]), kwargs)
    assert not engine._batchable(clips[0], engine._decode_kwargs(TranscribeOptions(initial_prompt="Hello.")))


def test_a_node_gathers_clips_to_pack_only_when_packing_is_asked_for():
    assert Settings(node_concurrency=4).clip_batch_for("cpu") == 0
    assert Settings(node_concurrency=4, clip_pack=True).clip_batch_for("cpu") == 4
    assert Settings(node_concurrency=4).clip_batch_for("cuda") == 4  # CUDA batches rows by default


def test_a_node_that_packs_clips_takes_a_whole_gathering_ahead_of_its_engine():
    packing = Settings(node_concurrency=8, clip_pack=True)
    assert node_host._prefetch(packing, Lane.CPU, "cpu") == 8
    assert node_host._prefetch(packing, Lane.GPU, "cpu") == 8
    # unless told otherwise; a node that gathers nothing keeps its default
    assert node_host._prefetch(packing.model_copy(update={"node_prefetch": 2}), Lane.CPU, "cpu") == 2
    assert node_host._prefetch(Settings(node_concurrency=4), Lane.CPU, "cpu") == 0
    assert node_host._prefetch(Settings(node_concurrency=4), Lane.GPU, "cpu") == 1
    assert node_host._prefetch(Settings(node_concurrency=4), Lane.GPU, "cuda") == 1  # batch rows: unmeasured


def test_a_lone_clip_in_a_packing_engine_is_transcribed_as_without_packing(clips, alone):
    engine = _packing_engine()
    got = engine.transcribe(clips[1], TranscribeOptions(), on_segment=_ignore, cancelled=NEVER)
    assert got.text == alone[1].text and all(s.words is None for s in got.segments)
    assert (engine.packed_clips, engine.packed_windows) == (1, 1)


def test_node_metrics_count_gathered_clips_and_their_windows_by_mode():
    # Given a node's metrics reading an engine that has packed 7 clips into 2 windows
    registry = CollectorRegistry()
    counts: list[ClipCounts | None] = [ClipCounts("pack", 7, 2)]
    NodeMetrics(registry, node_id="n1", device="cpu").watch_clips(lambda: counts[0])
    labels = {"node": "n1", "device": "cpu", "mode": "pack"}
    # Then a scrape shows both, clips per window being their ratio
    assert registry.get_sample_value("gpubus_node_gathered_clips_total", labels) == 7
    assert registry.get_sample_value("gpubus_node_clip_groups_total", labels) == 2
    # and an engine that gathers nothing shows nothing
    counts[0] = None
    assert registry.get_sample_value("gpubus_node_gathered_clips_total", labels) is None


def test_windows_of_one_gathering_are_transcribed_at_once_each_clip_getting_its_own(clips, alone):
    # Given six jobs, the three clips twice, gathered together: two windows
    engine = _packing_engine(6)
    got = _together(engine, clips + clips, TranscribeOptions())
    # Then both windows were transcribed (in parallel), and each job has its own
    # clip's text: as close to what was said as the clip alone (its words may
    # differ from the clip alone's: the windows hold the clips in other orders)
    assert engine.clip_counts() == ClipCounts("pack", 6, 2)
    said = {i: (TESTDATA / f"{name}.txt").read_text() for i, name in ((0, "hello"), (1, "numbers"))}
    for i, g in enumerate(got):
        a = alone[i % 3]
        if i % 3 in said:
            ref = said[i % 3]
            assert word_error_rate(ref, g.text) <= word_error_rate(ref, a.text) + 0.1, (g.text, a.text)
        else:
            assert word_error_rate(a.text, g.text) <= 0.25, (g.text, a.text)
