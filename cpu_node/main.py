"""`gpubus cpu-node [--shared]`: pull the owner's CPU lane, or the shared pool."""

from __future__ import annotations

import asyncio

from bus.node_host import run_node
from bus.settings import Settings
from processors import factory
from processors.diarization import DiarizationSettings
from processors.whisper_engine import EngineConfig
from schemas.names import Lane
from schemas.processing import Processor


def make_processor(settings: Settings, node_id: str) -> Processor:
    cfg = EngineConfig(
        model=settings.whisper_model,
        device="cpu",
        compute_type=settings.compute_type or "int8",
        workers=settings.node_concurrency,
        clip_batch=settings.clip_batch_for("cpu"),
        clip_pack=settings.clip_pack,
    )
    return factory.build(
        cfg,
        settings.processor_context(node_id, Lane.CPU, "cpu"),
        enable_noop=settings.enable_noop,
        noop_seconds=settings.noop_seconds,
        diarization=DiarizationSettings(),
    )


def main(settings: Settings, *, shared: bool) -> None:
    asyncio.run(run_node(settings, Lane.CPU, lambda node_id: make_processor(settings, node_id), shared=shared))
