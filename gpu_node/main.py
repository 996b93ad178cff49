"""`gpubus gpu-node`: pull the owner's GPU lane."""

from __future__ import annotations

import asyncio

from bus.node_host import run_node
from bus.settings import Settings
from gpu_node import device, telemetry
from processors import factory
from processors.whisper_engine import EngineConfig
from schemas.names import Lane
from schemas.processing import Processor

GPU_BATCH_SIZE = 8  # BatchedInferencePipeline on CUDA; CPU runs stay sequential


def make_processor(settings: Settings, node_id: str) -> Processor:
    dev, compute = device.select(settings.device, settings.compute_type)
    cfg = EngineConfig(
        model=settings.whisper_model,
        device=dev,
        compute_type=compute,
        workers=settings.node_concurrency,
        batch_size=GPU_BATCH_SIZE if dev == "cuda" else 0,
    )
    return factory.build(cfg, node_id=node_id, enable_noop=settings.enable_noop)


def main(settings: Settings) -> None:
    asyncio.run(
        run_node(settings, Lane.GPU, lambda node_id: make_processor(settings, node_id), gpu_source=telemetry.open_source)
    )
