"""Choosing the device for a GPU node, refusing to pretend.

A GPU node on a machine without CUDA would silently be a slow CPU node that
the router sends GPU work to; it refuses to start unless told `--device cpu`
(what tests and CI do), and then says so loudly.
"""

from __future__ import annotations

import logging

from schemas.errors import GpubusError

log = logging.getLogger("gpubus.gpu_node.device")


class NoCudaDevice(GpubusError):
    """No CUDA device is visible to CTranslate2."""

    code = "NO_CUDA_DEVICE"


def cuda_device_count() -> int:
    import ctranslate2

    try:
        return ctranslate2.get_cuda_device_count()
    except RuntimeError:
        return 0


def select(requested: str, compute_type: str | None) -> tuple[str, str]:
    """Returns (device, compute type)."""
    if requested == "cpu":
        log.warning("GPU NODE RUNNING ON THE CPU (--device cpu): for tests only, it will be slow")
        return "cpu", compute_type or "int8"
    if cuda_device_count() == 0:
        raise NoCudaDevice("no CUDA device found; pass --device cpu to run the GPU node on the CPU (tests only)")
    return "cuda", compute_type or "float16"  # CUDA-only branch: float16 on the GPU
