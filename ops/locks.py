"""Per-image requirement files, locked from pyproject.toml by uv.

`python -m ops.locks` writes ops/deploy/requirements/<image>.txt for every
image named under `[tool.gpubus.images]` in pyproject.toml: the project's
dependencies less the image's `without`, plus its `extras`, resolved by
`uv pip compile` with a SHA-256 for every distribution, so `pip install
--require-hashes` in the Dockerfiles installs exactly what was locked.

The set of requirements is derived from pyproject, never written down twice:
the hand-kept list this replaces once left nkeys and httptools out of the
gateway image. Versions are held at the ones installed here (the environment
the test suite ran with) where those exist, so an image never picks up a
newer, untested release.

Each file's first line records the SHA-256 of its input requirements
(`input_digest`). tests/test_image_locks.py recomputes it from pyproject
offline: CI has no business resolving against a live index (a new upstream
release would turn a green build red with no change of ours), yet any edit to
an image's requirements in pyproject fails until the files are regenerated.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
OUT_DIR = ROOT / "ops" / "deploy" / "requirements"
# The oldest interpreter an image runs (Debian bookworm's and python:3.11-slim's);
# `--universal` keeps the lock valid on the CUDA base's 3.12 too.
PYTHON_VERSION = "3.11"
IMAGE_PYTHON = "3.11.2"  # Debian bookworm's python3, the oldest an image runs
DIGEST_PREFIX = "# input-sha256: "
REGENERATE = "python -m ops.locks"
CONSTRAINTS = "installed-here.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_inputs(pyproject: Path = PYPROJECT) -> dict[str, list[str]]:
    """{image: its requirement lines}, from the project's dependencies and extras."""
    project = tomllib.loads(pyproject.read_text())
    deps: list[str] = project["project"]["dependencies"]
    extras: dict[str, list[str]] = project["project"]["optional-dependencies"]
    out: dict[str, list[str]] = {}
    for image, spec in project["tool"]["gpubus"]["images"].items():
        without = {canonical(n) for n in spec.get("without", [])}
        unknown = without - {canonical(Requirement(d).name) for d in deps}
        if unknown:
            raise SystemExit(f"[tool.gpubus.images.{image}] without: {sorted(unknown)} are not dependencies")
        lines = [d for d in deps if canonical(Requirement(d).name) not in without]
        for extra in spec.get("extras", []):
            lines += extras[extra]
        out[image] = lines
    return out


def input_digest(lines: list[str]) -> str:
    """Order-free digest of the requirements: moving a line changes nothing."""
    normal = sorted(str(Requirement(line)) for line in lines)
    return hashlib.sha256("\n".join([PYTHON_VERSION, *normal]).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    first = lock.read_text().splitlines()[:1]
    return first[0].removeprefix(DIGEST_PREFIX) if first and first[0].startswith(DIGEST_PREFIX) else None


def installed_constraints() -> str:
    """name==version of what is installed here (public versions only: a
    local `+cpu` build has no counterpart on the index), leaving out a
    version that needs a newer Python than the images' oldest (soupsieve
    4.1.4 wants 3.11.5; Debian bookworm's python3 is 3.11.2): uv then picks
    the newest that runs there."""
    pins = set()
    for dist in md.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and "+" not in version and canonical(name) != "gpubus" and runs_on_images(dist):
            pins.add(f"{canonical(name)}=={version}")
    return "\n".join(sorted(pins)) + "\n"


def runs_on_images(dist: md.Distribution) -> bool:
    requires = dist.metadata["Requires-Python"]
    return not requires or SpecifierSet(requires).contains(IMAGE_PYTHON)


def uv_binary() -> str:
    path = shutil.which("uv")
    if path is None:
        raise SystemExit("uv is not installed: pip install uv")
    return path


def compile_lock(image: str, lines: list[str], out: Path, workdir: Path) -> None:
    """Relative input names in `workdir`, so the `# via` notes are the same on every machine."""
    (workdir / f"{image}.in").write_text("\n".join(lines) + "\n")
    cmd = [uv_binary(), "pip", "compile", f"{image}.in", "--output-file", str(out), "--quiet"]
    cmd += ["--universal", "--python-version", PYTHON_VERSION, "--generate-hashes"]
    cmd += ["--constraint", CONSTRAINTS, "--custom-compile-command", REGENERATE]
    # Resolve afresh each time: the constraints, not the old file, hold versions back.
    cmd += ["--upgrade", "--no-emit-index-url"]
    # The system's CA store: the index may sit behind a TLS-inspecting proxy.
    subprocess.run(cmd, check=True, cwd=workdir, env={**os.environ, "UV_NATIVE_TLS": "1"})
    out.write_text(f"{DIGEST_PREFIX}{input_digest(lines)}\n{out.read_text()}")


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / CONSTRAINTS).write_text(installed_constraints())
        for image, lines in image_inputs().items():
            out = out_dir / f"{image}.txt"
            compile_lock(image, lines, out, Path(tmp))
            written.append(out)
    return written


if __name__ == "__main__":
    for p in write():
        print(p.relative_to(ROOT), file=sys.stderr)
