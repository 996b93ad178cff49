"""pyannote.audio, for operators who installed it and put a pipeline on the
node (GPUBUS_DIARIZATION_MODEL: a local directory or config.yaml; on CUDA on
GPU nodes). A hub name is fetched only when the operator set both
GPUBUS_DIARIZATION_ALLOW_DOWNLOAD=true and a token: gpubus never downloads
weights by itself.

Not exercised by the test suite: pyannote.audio and its weights are not on
the test machines (only `installed()` and the refusal to download are).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from processors.diarization import (
    SAMPLE_RATE,
    DiarizationSettings,
    DiarizationUnavailable,
    EngineProgress,
    Turn,
    no_progress,
    speaker_names,
)
from schemas.diarization import DiarizeOptions

log = logging.getLogger("gpubus.processors.diarization.pyannote")


def installed() -> bool:
    """Without importing it (pyannote.audio takes seconds to import)."""
    try:
        return importlib.util.find_spec("pyannote.audio") is not None
    except ModuleNotFoundError:  # no `pyannote` namespace at all
        return False


def checkpoint(settings: DiarizationSettings) -> tuple[str, dict[str, Any]]:
    """What `Pipeline.from_pretrained` gets: a local path as is; a hub name
    only with the operator's explicit permission and token."""
    assert settings.model
    if Path(settings.model).expanduser().exists():
        return str(Path(settings.model).expanduser()), {}
    if settings.allow_download and settings.hf_token:
        return settings.model, {"token": settings.hf_token.get_secret_value()}
    raise DiarizationUnavailable(
        f"pyannote pipeline {settings.model!r} is not a local path; put it on the node, or set "
        "GPUBUS_DIARIZATION_ALLOW_DOWNLOAD=true and GPUBUS_DIARIZATION_HF_TOKEN to let it be fetched"
    )


def engine_name(settings: DiarizationSettings) -> str:
    """Known before loading: nodes advertise it, results and metrics carry it."""
    return f"pyannote ({Path(settings.model or '').name})"


def _hook(progress: EngineProgress, duration_s: float) -> Callable[..., None]:
    """pyannote's step hook as progress: each step (segmentation, embeddings)
    reports `completed` of `total` chunks."""

    def hook(
        step_name: str, step_artifact: Any, file: Any = None, total: int | None = None, completed: int | None = None
    ) -> None:
        done = duration_s * completed / total if total and completed is not None else 0.0
        progress(done, duration_s)

    return hook


class PyannoteEngine:
    name = "pyannote"

    def __init__(self, pipeline: Any, name: str) -> None:
        self._pipeline = pipeline
        self.name = name

    @classmethod
    def load(cls, source: tuple[str, dict[str, Any]], settings: DiarizationSettings, device: str) -> PyannoteEngine:
        """`source` is what `checkpoint(settings)` allowed."""
        import torch
        from pyannote.audio import Pipeline

        path, kwargs = source
        pipeline = Pipeline.from_pretrained(path, **kwargs)
        if pipeline is None:  # pyannote returns None, not an error, for a gated or missing model
            raise DiarizationUnavailable(f"pyannote could not load {settings.model!r}")
        pipeline.to(torch.device(device))
        log.info("loaded pyannote pipeline %s on %s", settings.model, device)
        return cls(pipeline, engine_name(settings))

    def diarize(self, audio: np.ndarray, opts: DiarizeOptions, progress: EngineProgress = no_progress) -> list[Turn]:
        import torch

        fewest, most = opts.bounds()
        counts = {"num_speakers": fewest} if fewest == most else {"min_speakers": fewest, "max_speakers": most}
        file = {"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLE_RATE}
        out = self._pipeline(file, hook=_hook(progress, len(audio) / SAMPLE_RATE), **counts)
        annotation = getattr(out, "speaker_diarization", out)  # pyannote 4 wraps the annotation
        return speaker_names([(seg.start, seg.end, spk) for seg, _, spk in annotation.itertracks(yield_label=True)])
