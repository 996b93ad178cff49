"""The images' requirement files (ops/deploy/requirements/<image>.txt) are
uv locks of pyproject.toml (`python -m ops.locks`): these tests fail when
they drift from pyproject, and install each one alone into a fresh venv to
show that every entry point of that image imports with nothing else (where
Docker runs, tests/test_images.py does that inside the built image instead).

Drift is checked offline: each lock's first line is the SHA-256 of the
requirements it was made from, recomputed here from pyproject. Re-resolving
against the live index in CI would fail on any upstream release, not on our
change.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from ops import locks
from testkit import images
from testkit.images import ENTRY_POINTS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "ops" / "deploy"
# yt-dlp is not among them: the gateway reads its extractors' URL patterns (gateway/url_kinds.py).
MODEL_RUNTIME = {"faster-whisper", "ctranslate2", "av", "torch", "onnxruntime", "tokenizers", "pypdfium2"}
# Linux x86_64 on the images' oldest interpreter: how the universal lock's markers are read.
TARGET = {**default_environment(), "python_version": locks.PYTHON_VERSION, "sys_platform": "linux"}


def pinned(image: str) -> dict[str, tuple[str, str]]:
    """{name: (version, the whole entry)} of the lines that apply on TARGET."""
    text = (locks.OUT_DIR / f"{image}.txt").read_text()
    out = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = entry.split(" \\")[0].strip()
        if not head or head.startswith("#"):
            continue
        req = Requirement(head)
        if req.marker is None or req.marker.evaluate(TARGET):
            (spec,) = req.specifier
            out[locks.canonical(req.name)] = (spec.version, entry)
    return out


@pytest.mark.parametrize("image", locks.image_inputs())
def test_lock_matches_pyproject(image):
    # Given the requirements pyproject gives this image, and its lock file
    lines = locks.image_inputs()[image]
    lock = locks.OUT_DIR / f"{image}.txt"
    # Then the lock was made from exactly these requirements
    assert locks.recorded_digest(lock) == locks.input_digest(lines), f"{lock.name} is stale: run `{locks.REGENERATE}`"
    # and pins each of them, at a version its specifier allows, with hashes
    pins = pinned(image)
    for raw in lines:
        req = Requirement(raw)
        name = locks.canonical(req.name)
        assert name in pins, f"{name} missing from {lock.name}"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} vs {req}"
    assert all("--hash=sha256:" in entry for _, entry in pins.values())


@pytest.mark.parametrize("image", locks.image_inputs())
def test_lock_is_closed(image):
    """Everything a pinned distribution needs is pinned too, read from the
    metadata of the same version where it is installed here (offline)."""
    pins = pinned(image)
    for name, (version, _) in pins.items():
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for raw in dist.requires or []:
            sub = Requirement(raw)
            if sub.marker is None or sub.marker.evaluate({**TARGET, "extra": ""}):
                assert locks.canonical(sub.name) in pins, f"{name} needs {sub.name}, not in {image}.txt"


def test_gateway_lock_has_no_model_runtime_and_the_servers_parts():
    gateway = pinned("gateway")
    assert not (set(gateway) & MODEL_RUNTIME)
    # the auth callout signs with nkeys; uvicorn parses HTTP with httptools
    assert {"nkeys", "pynacl", "httptools", "uvicorn"} <= set(gateway)
    # one set of versions across the images
    node = pinned("cpu-node")
    assert {k: node[k][0] for k in gateway if k in node} == {k: v[0] for k, v in gateway.items() if k in node}


def test_gpu_image_carries_nvml_and_no_torch():
    gpu = pinned("gpu-node")
    assert "nvidia-ml-py" in gpu and "torch" not in gpu
    ct2 = tuple(map(int, gpu["ctranslate2"][0].split(".")[:2]))
    assert ct2 >= (4, 5)  # CUDA 12 + cuDNN 9: what the CUDA base image carries


@pytest.mark.parametrize("image", locks.image_inputs())
def test_dockerfile_installs_its_lock_with_hashes(image):
    text = (DEPLOY / f"{image}.Dockerfile").read_text()
    assert f"ops/deploy/requirements/{image}.txt" in text
    # --no-deps: the lock is closed (test_lock_is_closed); pip's own resolver in hash mode
    # refuses a pinned package asked for with an extra (justext's `lxml[html_clean]`)
    assert "--require-hashes --no-deps" in text and "pip install --no-deps" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("image", locks.image_inputs())
def test_each_lock_alone_runs_its_images_entry_points(image, tmp_path):
    if images.unavailable() is None:
        # The image build installs this same lock with --require-hashes --no-deps and
        # tests/test_images.py imports every entry point inside it: a venv here would
        # repeat that (3.4 min cold on 2 cores) and prove nothing more.
        pytest.skip("Docker is here: tests/test_images.py runs this lock's entry points in its image")
    # Given a fresh venv with only this image's lock installed (the machine's
    # configured index; pip's cache makes a second run quick)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    lock = str(locks.OUT_DIR / f"{image}.txt")
    install = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", lock],
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # When its entry points are imported and its command's --help runs, with
    # gpubus from this tree and nothing from the test environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBUS_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    out = subprocess.run([py, "-c", code, *ENTRY_POINTS[image]], capture_output=True, text=True, env=env, timeout=120)
    # Then each imports
    assert out.returncode == 0, out.stderr[-3000:]
    cli = subprocess.run([py, "-m", "ops.cli", image, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 0 and "usage" in cli.stdout, cli.stderr[-2000:]
