"""GPU memory and utilisation for a GPU node's /metrics.

NVML (the `nvidia-ml-py` package, module `pynvml`) is the source of truth:
it sees memory used by every process and the utilisation counter. Where it
is missing, torch's CUDA API gives memory (not utilisation). Where neither
works, as on every machine without an NVIDIA driver, the node reports
source="none" and 0 devices: a clear "no telemetry here", never a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

from bus.metrics import GpuReading, GpuSource

log = logging.getLogger("gpubus.gpu_node.telemetry")


class TelemetryUnavailable(Exception):
    """This source cannot read any GPU here (no library, no driver, no device)."""


@dataclass
class NoGpu:
    reason: str
    name: str = "none"

    def read(self) -> list[GpuReading]:
        return []


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class NvmlSource:
    name = "nvml"

    def __init__(self, nvml: ModuleType) -> None:
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as e:  # library present, driver absent
            raise TelemetryUnavailable(f"NVML: {e}") from e
        if count == 0:
            raise TelemetryUnavailable("NVML sees no device")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def read(self) -> list[GpuReading]:
        nvml = self._nvml
        out = []
        for i, h in enumerate(self._handles):  # CUDA-only: runs only where NVML found a device
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            util = nvml.nvmlDeviceGetUtilizationRates(h)
            out.append(GpuReading(i, _text(nvml.nvmlDeviceGetName(h)), mem.used, mem.total, util.gpu / 100.0))
        return out


class TorchSource:
    name = "torch"

    def __init__(self, torch: ModuleType) -> None:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            raise TelemetryUnavailable("torch sees no CUDA device")
        self._torch = torch

    def read(self) -> list[GpuReading]:
        cuda = self._torch.cuda
        out = []
        for i in range(cuda.device_count()):  # CUDA-only
            free, total = cuda.mem_get_info(i)
            out.append(GpuReading(i, cuda.get_device_name(i), total - free, total, None))
        return out


def _import(name: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as e:  # OSError: a torch whose CUDA libraries are broken
        raise TelemetryUnavailable(f"{name} not importable ({e})") from e


def open_source() -> GpuSource:
    """NVML, else torch, else none; says which and why once, at start."""
    reasons = []
    for module, make in (("pynvml", NvmlSource), ("torch", TorchSource)):
        try:
            source = make(_import(module))
        except TelemetryUnavailable as e:
            reasons.append(str(e))
            continue
        log.info("GPU telemetry from %s", source.name)
        return source
    reason = "; ".join(reasons)
    log.warning('no GPU telemetry on this node (%s): gpubus_node_gpu_devices{source="none"} is 0', reason)
    return NoGpu(reason)
