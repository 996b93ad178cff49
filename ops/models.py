"""`gpubus models fetch NAME --dir DIR`: put a Whisper model on a node ahead
of time. Nodes never download while serving (processors/model_paths.py), so
this is the one step that does, run by the operator before the first start
(in the images: into the volume mounted at /models).

faster-whisper's own `download_model` names the CTranslate2 conversions it
knows (tiny … large-v3, distil-*, turbo) and fetches them from the model
hub; a directory that already holds a model.bin is left alone, so the
command can run on every deploy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from processors import model_paths
from schemas.errors import GpubusError


class ModelFetchFailed(GpubusError):
    """The model could not be fetched (unknown name, no network, no space)."""

    code = "MODEL_FETCH_FAILED"


def fetch(name: str, directory: Path) -> tuple[Path, bool]:
    """(the model's directory, whether it was fetched now)."""
    target = directory / name
    if (target / "model.bin").is_file():
        return target, False
    from faster_whisper import download_model

    try:
        download_model(name, output_dir=str(target))
    except (OSError, ValueError) as e:  # network, disk, or a name faster-whisper does not know
        raise ModelFetchFailed(f"could not fetch whisper model {name!r} into {target}: {e}") from e
    if not (target / "model.bin").is_file():
        raise ModelFetchFailed(f"{target} has no model.bin after the download")
    return target, True


def cmd_models_fetch(args: argparse.Namespace) -> None:
    target, fetched = fetch(args.name, args.dir)
    print(f"{'fetched' if fetched else 'present'}: {target}")
    print(f"GPUBUS_WHISPER_MODEL={target}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="Whisper models on this machine")
    ms = models.add_subparsers(dest="models_cmd", required=True)
    mf = ms.add_parser("fetch", help="download a model once, before the first start (nodes never download)")
    mf.add_argument("name", help="large-v3, medium, small.en, distil-large-v3, …")
    mf.add_argument("--dir", type=Path, default=Path(model_paths.IMAGE_MODELS_DIR), help="default: %(default)s")
    mf.set_defaults(fn=cmd_models_fetch)
