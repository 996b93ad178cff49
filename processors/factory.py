"""Building a node's processor set from plain settings values."""

from __future__ import annotations

from processors.dispatch import ByKind
from processors.media_fetch import FetchConfig
from processors.noop import NoopProcessor
from processors.transcription import TranscriptionProcessor
from processors.url_media import UrlProcessor
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.processing import Processor


def build(cfg: EngineConfig, *, node_id: str, enable_noop: bool, fetch: FetchConfig) -> ByKind:
    """One engine (one model load) serves uploads and downloads alike."""
    engine = WhisperEngine(cfg)
    transcriber = TranscriptionProcessor(engine, node_id=node_id)
    procs: list[Processor] = [transcriber, UrlProcessor(transcriber, fetch)]
    if enable_noop:
        procs.append(NoopProcessor(cfg.device))
    return ByKind(procs, device=cfg.device, load_seconds=engine.load_seconds)
