"""CUDA out-of-memory: recognising it, and the one retry it earns.

A job that runs the GPU out of memory (a long file, a big batch, another
process on the card) is decoded again once with half the batch; if that
fails too the job is nak'ed (`JobRetryable`), so it is redelivered or falls
back to a CPU node, and the node itself stays up for the next job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from schemas.errors import JobRetryable

log = logging.getLogger("gpubus.processors.gpu_memory")

GPU_OUT_OF_MEMORY = "GPU_OUT_OF_MEMORY"
# CTranslate2 raises RuntimeError("CUDA failed with error out of memory") or
# a cuBLAS/cuDNN allocation failure; torch raises torch.cuda.OutOfMemoryError
# (a RuntimeError) with "CUDA out of memory".
_OOM_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")

T = TypeVar("T")


def is_cuda_oom(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        return True
    if not isinstance(exc, RuntimeError):
        return False
    msg = str(exc).lower()
    return any(m in msg for m in _OOM_MARKERS)


def smaller_batch(batch_size: int) -> int:
    return max(1, batch_size // 2)


def with_oom_retry(run: Callable[[int], T], batch_size: int) -> T:
    """`run(batch_size)` once; on OOM once more with a smaller batch (when
    batching); on a second OOM, JobRetryable. Other errors pass through."""
    try:
        return run(batch_size)
    except Exception as e:
        if not is_cuda_oom(e):
            raise
        first = e
    if batch_size > 1:
        retry_batch = smaller_batch(batch_size)
        log.warning("CUDA out of memory at batch %d; retrying the job at batch %d", batch_size, retry_batch)
        try:
            return run(retry_batch)
        except Exception as e:
            if not is_cuda_oom(e):
                raise
            first = e
    _release_cached_memory()
    raise JobRetryable(GPU_OUT_OF_MEMORY, f"the GPU ran out of memory ({first}); handing the job back") from first


def _release_cached_memory() -> None:
    """CUDA-only: give torch's cached blocks back if torch is loaded at all
    (CTranslate2 frees its own buffers when the failed call unwinds)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
