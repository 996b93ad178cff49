"""GPU telemetry on nodes: NVML, torch, or a clear "none" — never a crash.

There is no GPU on the machines this suite runs on, so the real sources are
exercised as far as they go here (nvidia-ml-py installed, no driver), and
the NVML mapping onto metrics is checked with a stand-in module that answers
like NVML does.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bus.metrics import GpuReading, NodeMetrics
from gpu_node import telemetry
from tests.promql import Exposition

pytestmark = pytest.mark.timeout(30)

NODE = {"node": "gpu-test-1", "device": "cuda"}


def _metrics(source) -> CollectorRegistry:
    registry = CollectorRegistry()
    NodeMetrics(registry, node_id=NODE["node"], device=NODE["device"]).watch_gpus(source)
    return registry


def test_this_machine_reports_what_it_has():
    # Given whatever this machine has (here: no NVIDIA driver, maybe no torch)
    source = telemetry.open_source()
    readings = source.read()
    # Then either real GPUs with memory, or source "none" with nothing and a reason
    if source.name == "none":
        assert readings == [] and source.reason
    else:
        assert readings and all(r.memory_total_bytes > 0 for r in readings)


def test_nvml_library_without_a_driver_degrades_to_none():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is in the test extra")
    try:
        pynvml.nvmlInit()
        pytest.skip("an NVIDIA driver is present here")
    except pynvml.NVMLError:
        pass
    with pytest.raises(telemetry.TelemetryUnavailable, match="NVML"):
        telemetry.NvmlSource(pynvml)


def test_no_library_at_all_is_source_none_with_zero_devices(monkeypatch):
    # Given neither nvidia-ml-py nor torch importable
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    source = telemetry.open_source()
    assert source.name == "none" and "pynvml" in source.reason and "torch" in source.reason
    # Then /metrics says so plainly: 0 devices from source none, no memory series
    registry = _metrics(source)
    assert registry.get_sample_value("gpubus_node_gpu_devices", {**NODE, "source": "none"}) == 0
    exported = Exposition().add(generate_latest(registry).decode())
    assert "gpubus_node_gpu_memory_used_bytes" not in exported.samples
    assert exported.exports("gpubus_node_gpu_memory_used_bytes")  # declared, so dashboards resolve the name


def test_a_failing_read_is_counted_not_a_failed_scrape():
    class Broken:
        name = "nvml"

        def read(self):
            raise RuntimeError("GPU has fallen off the bus")

    registry = _metrics(Broken())
    text = generate_latest(registry).decode()
    assert 'gpubus_node_gpu_devices{device="cuda",node="gpu-test-1",source="nvml"} 0.0' in text
    assert registry.get_sample_value("gpubus_node_gpu_read_errors_total", NODE) == 1


class FakeNvml(SimpleNamespace):
    """Answers like pynvml on a box with two GPUs (names as bytes, as older
    NVML bindings return them)."""

    class NVMLError(Exception):
        pass

    def __init__(self):
        super().__init__(inits=0)

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA L4" if h == 0 else "NVIDIA A10"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=(h + 1) * 1024**3, total=24 * 1024**3, free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=40 + h * 50, memory=10)


def test_nvml_readings_map_to_per_gpu_gauges():
    nvml = FakeNvml()
    source = telemetry.NvmlSource(nvml)
    assert source.read()[0] == GpuReading(0, "NVIDIA L4", 1024**3, 24 * 1024**3, 0.4)
    registry = _metrics(source)
    g1 = {**NODE, "gpu": "1", "gpu_name": "NVIDIA A10"}
    assert registry.get_sample_value("gpubus_node_gpu_devices", {**NODE, "source": "nvml"}) == 2
    assert registry.get_sample_value("gpubus_node_gpu_memory_used_bytes", g1) == 2 * 1024**3
    assert registry.get_sample_value("gpubus_node_gpu_memory_total_bytes", g1) == 24 * 1024**3
    assert registry.get_sample_value("gpubus_node_gpu_utilization_ratio", g1) == pytest.approx(0.9)
    assert nvml.inits == 1  # initialised once at start, not per scrape


def test_torch_without_cuda_is_unavailable():
    torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False, device_count=lambda: 0))
    with pytest.raises(telemetry.TelemetryUnavailable, match="no CUDA"):
        telemetry.TorchSource(torch)
