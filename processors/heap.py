"""The node process's heap after a model loads: frozen out of the cyclic GC.

A loaded node holds hundreds of thousands of long-lived Python objects
(faster-whisper and CTranslate2's wrappers; torch, librosa and numba once
the diarization engine loads: 44 k objects with Whisper alone, 320 k with
both), and every full collection walks all of them. When the node decoded
with faster-whisper's `decode_audio`, which runs one on every call
(`gc.collect()`, to free PyAV's resampler promptly), each job's decode paid
a walk over the models: 77 s of WAV decoded in 0.06-0.14 s in a fresh
process and 0.4-0.6 s in a loaded one on this 2-core machine, the node's
largest cost outside its engines. Our decode runs none now
(processors/audio_decode.py); the cyclic GC's own full collections still
come now and then, and the freeze keeps those short. `gc.freeze()` moves
what exists now to the permanent generation, which collections skip;
objects made later (a job's) are collected as before, and frozen ones are
still freed by reference counting.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("gpubus.processors.heap")


def freeze_loaded(what: str) -> int:
    """Collect what loading `what` left as garbage (so none of it is frozen
    for good), then freeze the rest; returns how many objects are frozen."""
    t0 = time.monotonic()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d objects out of the cyclic GC after loading %s (%.2fs)", frozen, what, time.monotonic() - t0)
    return frozen
