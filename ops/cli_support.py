"""What every `gpubus` command shares: settings from the arguments, the
checked input file, and JSON on stdout for scripts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bus.settings import Settings
from ops.exits import (
    MissingFile,
    UnreadableFile,
)


def print_json(data: Any) -> None:
    """The one JSON document a command prints on stdout."""
    print(json.dumps(data, indent=2))


def readable_file(path: Path) -> Path:
    """`path`, checked before anything is sent or started: a mistyped name
    should read as one line, not as a traceback from deep in an upload."""
    try:
        with path.open("rb"):
            return path
    except FileNotFoundError:
        raise MissingFile(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise UnreadableFile(f"cannot read {path}: {e.strerror or e}") from None


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    updates = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**updates) if updates else Settings()
