"""Dynamic batching across jobs: short clips that different jobs bring to
the engine at about the same time are decoded as one batch.

A batched engine (CTranslate2's batch generation, as faster-whisper's
`BatchedInferencePipeline` uses within one file) does several 30 s windows
for little more than the price of one, but a 5 s clip fills one window of
one row: many short jobs, each decoded alone, leave the engine mostly idle.
Like an inference server's dynamic batcher, calls wait here for a few
milliseconds at most; whoever finds no batch being decoded leads the next:
it takes the waiting calls of its kind (same decode options, up to
`max_batch`), decodes them together on its own worker thread and hands each
caller its result. While a batch decodes, the next calls queue, so under
load batches fill by themselves, and a lone call waits only `max_wait_s`.

A node's jobs reach the engine a few at a time, not together: when a batch
ends, the jobs the node took meanwhile are still being fetched or waiting
for the engine slots it frees, and a leader that waited only `max_wait_s`
after its own call went with one or two clips (the next batch then took the
rest, and so on, half-full batches alternating). So the wait is counted
from the last call that came, and it goes on, up to `max_gather_s`, while
`coming` (the node's count of jobs it holds that have not reached the
engine yet) says more are on their way. With nothing coming, a lone call
still waits `max_wait_s` and no more.

Nothing here knows Whisper or NATS: `decode` is given the waiting items of
one key and returns one result per item, in order. An item's result may be
an exception: that caller alone gets it raised (a batch that falls back to
one item at a time fails only the items that fail alone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.errors import JobCancelled

log = logging.getLogger("gpubus.processors.clip_batcher")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Call(Generic[T, R]):
    key: Hashable
    item: T
    cancelled: threading.Event
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None


class ClipBatcher(Generic[T, R]):
    def __init__(
        self,
        decode: Callable[[Hashable, Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_gather_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._decode = decode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_gather_s = max(max_wait_s, max_gather_s)
        # Jobs on their way to this batcher (set by the node through the engine); none by default.
        self.coming: Callable[[], int] = lambda: 0
        self._cv = threading.Condition()
        self._waiting: list[_Call[T, R]] = []
        self._leading = False
        self.batches = 0  # decoded so far, and the calls in them: the mean batch size is their ratio
        self.calls = 0

    def run(self, key: Hashable, item: T, cancelled: threading.Event) -> R:
        """Block until `item` is decoded, in a batch led by this thread or another."""
        call: _Call[T, R] = _Call(key, item, cancelled)
        with self._cv:
            self._waiting.append(call)
            self._cv.notify_all()
            while not call.done.is_set():
                if cancelled.is_set() and call in self._waiting:
                    self._waiting.remove(call)
                    raise JobCancelled()
                if not self._leading:
                    self._lead(key)
                    continue
                self._cv.wait(timeout=0.05)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set with `done` when error is None

    def _lead(self, key: Hashable) -> None:
        """Called holding the lock; decodes one batch with the lock released."""
        self._leading = True
        t0 = time.monotonic()
        cap, quiet_until, seen = t0 + self.max_gather_s, t0 + self.max_wait_s, len(self._of(key))
        while seen < self.max_batch and (t := time.monotonic()) < cap:
            if t >= quiet_until and self.coming() <= 0:
                break
            # `coming` changes without a notify: look again every max_wait_s
            until = quiet_until if t < quiet_until else t + self.max_wait_s
            self._cv.wait(timeout=min(cap, until) - t)
            if (n := len(self._of(key))) > seen:
                seen, quiet_until = n, time.monotonic() + self.max_wait_s
        batch = self._of(key)[: self.max_batch]
        for call in batch:
            self._waiting.remove(call)
        self._cv.release()
        try:
            self._decode_batch(key, batch)
        finally:
            self._cv.acquire()
            self._leading = False
            self.batches += 1
            self.calls += len(batch)
            self._cv.notify_all()

    def _of(self, key: Hashable) -> list[_Call[T, R]]:
        return [c for c in self._waiting if c.key == key and not c.cancelled.is_set()]

    def _decode_batch(self, key: Hashable, batch: list[_Call[T, R]]) -> None:
        """Every call of the batch ends: with its result, or with the batch's error."""
        t0 = time.monotonic()
        try:
            results = self._decode(key, [c.item for c in batch])
            log.info("decoded %d clips in one batch in %.2fs", len(batch), time.monotonic() - t0)
            if len(results) != len(batch):
                raise RuntimeError(f"batch decode gave {len(results)} results for {len(batch)} items")
            for call, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    call.error = result
                else:
                    call.result = result
        except BaseException as e:
            for call in batch:
                call.error = e
        finally:
            for call in batch:
                call.done.set()
