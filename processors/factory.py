"""Building a node's processor set: the built-ins, then installed plugins.

The built-ins are an explicit list, not entry points of gpubus itself: they
share one Whisper engine (one model load serves uploads and downloads),
which independent entry-point factories could not; they must not depend
on packaging metadata being fresh (an editable install's entry points are
written at install time); and a built-in that fails should stop the node,
where a plugin that fails is logged and skipped (processors/plugins.py).
"""

from __future__ import annotations

from processors import heap, kinds, plugins
from processors.diarization import DiarizationSettings, node_diarizer
from processors.dispatch import ByKind
from processors.media_fetch import FetchConfig
from processors.noop import NoopProcessor
from processors.transcription import TranscriptionProcessor
from processors.url_media import UrlProcessor
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.processing import Processor, ProcessorContext


def build(
    cfg: EngineConfig,
    ctx: ProcessorContext,
    *,
    enable_noop: bool,
    noop_seconds: float = 0.0,
    diarization: DiarizationSettings | None = None,
) -> ByKind:
    """One engine (one model load) serves uploads and downloads alike, and
    one diarizer (loaded by the first job that asks) diarizes both."""
    engine = WhisperEngine(cfg)
    diarizer = node_diarizer(diarization, device=cfg.device) if diarization is not None else None
    transcriber = TranscriptionProcessor(engine, node_id=ctx.node_id, diarizer=diarizer)
    fetch = FetchConfig(ctx.download_max_bytes, ctx.download_timeout_s, ctx.allow_private_urls)
    procs: list[Processor] = [transcriber, UrlProcessor(transcriber, fetch)]
    procs += kinds.build(ctx)
    if enable_noop:
        procs.append(NoopProcessor(cfg.device, seconds=noop_seconds))
    procs += plugins.load(ctx, taken={k for p in procs for k in p.kinds})
    heap.freeze_loaded("the node's processors")  # every later full collection skips the model's objects
    return ByKind(
        plugins.for_lane(procs, ctx.lane),
        device=cfg.device,
        load_seconds=engine.load_seconds,
        clip_counts=engine.clip_counts,
        expect_from=engine.expect_from,
    )
