"""`gpubus gpu-node`: pull the owner's GPU lane."""

from __future__ import annotations

import asyncio

from bus.node_host import run_node
from bus.settings import Settings
from gpu_node import device, telemetry
from processors import factory
from processors.diarization import DiarizationSettings
from processors.whisper_engine import EngineConfig
from schemas.names import Lane
from schemas.processing import Processor

CUDA_DEFAULT_MODEL = "large-v3"  # what people buy a GPU for; must be installed on the node


def engine_config(settings: Settings) -> EngineConfig:
    """On CUDA: large-v3 (unless GPUBUS_WHISPER_MODEL), float16, batched.
    On the CPU (tests, `--device cpu`): the offline tiny.en, sequential."""
    dev, compute = device.select(settings.device, settings.compute_type)
    cuda = dev == "cuda"
    return EngineConfig(
        model=settings.whisper_model or (CUDA_DEFAULT_MODEL if cuda else None),
        device=dev,
        compute_type=compute,
        workers=settings.node_concurrency,
        batch_size=settings.gpu_batch_size if cuda else 0,
        clip_batch=settings.clip_batch_for(dev),
        clip_pack=settings.clip_pack,
    )


def make_processor(settings: Settings, node_id: str) -> Processor:
    cfg = engine_config(settings)
    ctx = settings.processor_context(node_id, Lane.GPU, cfg.device)
    return factory.build(
        cfg,
        ctx,
        enable_noop=settings.enable_noop,
        noop_seconds=settings.noop_seconds,
        diarization=DiarizationSettings(),
    )


def main(settings: Settings) -> None:
    asyncio.run(
        run_node(
            settings, Lane.GPU, lambda node_id: make_processor(settings, node_id), gpu_source=telemetry.open_source
        )
    )
