"""A node freezes what its engines loaded out of the cyclic GC (processors/heap.py):
every full collection (faster-whisper's decode ran one per job; the cyclic
GC runs its own now and then) walked every model object each time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from processors import heap
from processors.diarization import DiarizationUnavailable, Diarizer, Turn
from schemas.diarization import DiarizeOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and leaves the test process's heap unfrozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """Stands for a loaded model: an object graph with a cycle in it."""

    def __init__(self) -> None:
        self.me = self


def in_collected_generations(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


class FakeEngine:
    name = "fake"

    def __init__(self) -> None:
        self.weights = Node()

    def diarize(self, audio: np.ndarray, opts: DiarizeOptions, progress=None) -> list[Turn]:
        return []


def test_freeze_keeps_loaded_objects_out_of_collections_and_garbage_out_of_the_freeze() -> None:
    # Given a loaded model's objects, and garbage the load left (a cycle nobody holds)
    model = Node()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    # When the heap is frozen
    frozen = heap.freeze_loaded("a test model")
    # Then the model is frozen (no later full collection walks it), the garbage was collected first.
    # (The count read again may be lower, never higher: a frozen object dropped meanwhile, by the
    # freeze's own log line or another thread of the test process, is freed by reference counting;
    # a full run, its worker's heap shaped by the tests before, saw 697,358 then 697,356.)
    assert 0 < gc.get_freeze_count() <= frozen
    assert not in_collected_generations(model)
    assert gone() is None
    # And an object made afterwards (a job's) is collected as before
    later = Node()
    assert in_collected_generations(later)
    later_ref = weakref.ref(later)
    del later
    gc.collect()
    assert later_ref() is None


def test_diarizer_freezes_its_engine_once_loaded() -> None:
    # Given a diarizer whose engine loads lazily
    loads = []

    def load() -> FakeEngine:
        loads.append(1)
        return FakeEngine()

    diarizer = Diarizer("fake", load)
    assert gc.get_freeze_count() == 0
    # When the first job asks for the engine, and a second one
    engine = diarizer.engine()
    assert diarizer.engine() is engine
    # Then it loaded once and the engine's objects are out of later collections
    assert loads == [1]
    assert gc.get_freeze_count() > 0
    assert not in_collected_generations(engine.weights)


def test_a_diarizer_that_fails_to_load_freezes_nothing() -> None:
    # Given an engine whose load fails
    def load() -> FakeEngine:
        raise RuntimeError("no weights")

    diarizer = Diarizer("fake", load)
    # When a job asks for it, then it is unavailable and the heap was left as it was
    with pytest.raises(DiarizationUnavailable):
        diarizer.engine()
    assert gc.get_freeze_count() == 0
