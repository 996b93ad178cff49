"""`gpubus cpu-node [--shared]`: pull the owner's CPU lane, or the shared pool."""

from __future__ import annotations

import asyncio

from bus.node_host import run_node
from bus.settings import Settings
from processors import factory
from processors.media_fetch import FetchConfig
from processors.whisper_engine import EngineConfig
from schemas.names import Lane
from schemas.processing import Processor


def make_processor(settings: Settings, node_id: str) -> Processor:
    cfg = EngineConfig(
        model=settings.whisper_model,
        device="cpu",
        compute_type=settings.compute_type or "int8",
        workers=settings.node_concurrency,
    )
    return factory.build(
        cfg,
        node_id=node_id,
        enable_noop=settings.enable_noop,
        fetch=FetchConfig(settings.download_max_bytes, settings.download_timeout, settings.allow_private_urls),
    )


def main(settings: Settings, *, shared: bool) -> None:
    asyncio.run(run_node(settings, Lane.CPU, lambda node_id: make_processor(settings, node_id), shared=shared))
