"""Decoding media to Whisper's samples (processors/audio_decode.py): the
samples faster-whisper's `decode_audio` gives, without the full garbage
collection it runs on every call, which in a node walked every object made
since the models loaded while holding the GIL."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest
from faster_whisper.audio import decode_audio

from processors import audio_decode
from tests.harness import TESTDATA

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """With automatic collections off, a collection seen is one the code ran."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.parametrize("name", ["hello.wav", "hello.mp4", "long.wav"])
def test_the_samples_are_faster_whispers_bit_for_bit(name: str) -> None:
    # Given a WAV, an MP4's AAC track, and a file longer than one resampling group
    path = TESTDATA / name
    # When both decode it, then the samples are the same, as float32 at 16 kHz
    ours = audio_decode.decode(path)
    theirs = decode_audio(str(path), sampling_rate=audio_decode.SAMPLE_RATE)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, theirs)
    if name == "long.wav":
        assert len(ours) > audio_decode.GROUP_SAMPLES


def test_a_decode_runs_no_full_collection(no_automatic_gc: None) -> None:
    # Given a watch on the garbage collector's runs
    generations: list[int] = []

    def watch(phase: str, info: dict) -> None:
        if phase == "start":
            generations.append(info["generation"])

    gc.callbacks.append(watch)
    try:
        # When a file is decoded
        audio_decode.decode(TESTDATA / "hello.wav")
    finally:
        gc.callbacks.remove(watch)
    # Then no collection ran at all (faster-whisper's decode runs gc.collect(), generation 2, every call)
    assert generations == []


def test_a_decode_leaves_no_pyav_object_to_the_cyclic_gc(no_automatic_gc: None) -> None:
    # Given a heap with no garbage yet, and the collector set to keep what it finds
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        # When files are decoded, and then the collector runs
        for name in ("hello.wav", "hello.mp4"):
            audio_decode.decode(TESTDATA / name)
        gc.collect()
        left = [type(o) for o in gc.garbage if type(o).__module__.split(".")[0] == "av"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # Then nothing of PyAV's waited for it: reference counting freed it all
    # (why faster-whisper collected on every call: its resamplers once sat in cycles)
    assert left == []
