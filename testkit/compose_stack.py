"""ops/deploy/compose.yaml brought up for real with `docker compose`, as
its header tells an operator to, on the images testkit/images.py built.

A small override file, written at test time, changes only what this machine
forces: the local images for NATS and Prometheus (public ones cannot be
pulled), host ports picked by Docker on 127.0.0.1 (no clash with anything
else here), the GPU node on `--device cpu` with the bundled tiny.en and no
NVIDIA device, a 5 s GPU ack wait so a dead GPU node's job falls back
quickly, and the `noop` kind for load. Grafana is not started (not in Debian).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testkit import images

DEPLOY = images.ROOT / "ops" / "deploy"
NATS = ("nats-0", "nats-1", "nats-2")
SERVICES = (*NATS, "gateway", "cpu-node")


def override(prometheus: bool) -> str:
    nats = "".join(
        f"  {n}:\n    image: {images.NATS_IMAGE}\n    ports: !override\n      - 127.0.0.1::4222\n" for n in NATS
    )
    prom = (
        f"  prometheus:\n    image: {images.PROMETHEUS_IMAGE}\n    ports: !override\n      - 127.0.0.1::9090\n"
        if prometheus
        else ""
    )
    noop = '      GPUBUS_ENABLE_NOOP: "true"\n'
    return (
        "services:\n"
        f"{nats}"
        "  gateway:\n    ports: !override\n      - 127.0.0.1::8000\n    environment:\n"
        f'      GPUBUS_GPU_ACK_WAIT: "5"\n{noop}'
        f"  cpu-node:\n    environment:\n{noop}"
        '  gpu-node:\n    command: ["gpu-node", "--device", "cpu"]\n    deploy: !reset {}\n'
        f"    environment:\n      GPUBUS_WHISPER_MODEL: tiny.en\n{noop}"
        f"{prom}"
    )


@dataclass
class ComposeStack:
    workdir: Path
    project: str = field(default_factory=lambda: f"gpubus-test-{uuid.uuid4().hex[:6]}")
    env: dict[str, str] = field(default_factory=dict)
    prometheus: bool = False

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        files = ["-f", str(DEPLOY / "compose.yaml"), "-f", str(self.workdir / "override.yaml")]
        cmd = ["docker-compose", *files, "-p", self.project, *args]
        out = subprocess.run(cmd, cwd=DEPLOY, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.stderr[-3000:]}")
        return out

    def prepare(self) -> None:
        """The .env an operator makes by the compose file's header: admin token,
        NATS identities, a CA and certificate the gateway (uid 10001) can read."""
        self.prometheus = images.image_exists(images.PROMETHEUS_IMAGE)
        (self.workdir / "override.yaml").write_text(override(self.prometheus))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GPUBUS_", "COMPOSE_"))}
        cli = [sys.executable, "-m", "ops.cli"]
        auth = subprocess.run([*cli, "nats-auth"], capture_output=True, text=True, check=True, timeout=60).stdout
        tls_dir = self.workdir / "tls"
        tls_cmd = [*cli, "tls", "init", "--dir", str(tls_dir), *[a for n in (*NATS, "gateway") for a in ("--name", n)]]
        tls_env = subprocess.run(tls_cmd, capture_output=True, text=True, check=True, timeout=60).stdout
        os.chown(tls_dir / "server-key.pem", 10001, 10001)  # README: `sudo chown 10001 tls/server-key.pem`
        lines = [line for line in (auth + tls_env).splitlines() if "=" in line and not line.startswith("#")]
        self.env = {**base, **dict(line.split("=", 1) for line in lines)}
        self.env |= {"GPUBUS_ADMIN_TOKEN": f"adm_{uuid.uuid4().hex}", "GPUBUS_VERSION": images.TAG}
        self.env["GPUBUS_TLS_DIR"] = str(tls_dir)
        self.env["COMPOSE_PROFILES"] = "gpu"  # the gpu-node service too (logs, down); `up` names what it starts

    def up(self, *services: str, timeout: float = 300) -> float:
        t0 = time.monotonic()
        self.compose(
            "up", "-d", "--no-build", "--wait", "--wait-timeout", str(int(timeout)), *services, timeout=timeout
        )
        return time.monotonic() - t0

    def down(self) -> None:
        logs = self.compose("logs", "--no-color", check=False, timeout=120)
        (self.workdir / "compose.log").write_text(logs.stdout + logs.stderr)
        self.compose("down", "-v", "--timeout", "5", check=False, timeout=300)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def hostname(self, service: str) -> str:
        return images.docker("inspect", "-f", "{{.Config.Hostname}}", self.container(service)).stdout.strip()

    def port(self, service: str, port: int) -> str:
        return self.compose("port", service, str(port)).stdout.strip()

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "tls" / "ca.pem"

    def client(self, key: str | None = None) -> httpx.Client:
        token = key or self.env["GPUBUS_ADMIN_TOKEN"]
        return httpx.Client(
            base_url=f"https://{self.port('gateway', 8000)}",
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=30,
        )

    def create_key(self, user: str) -> str:
        """As the README shows: `docker compose exec gateway gpubus keys create …`."""
        out = self.compose(
            "exec", "-T", "gateway", "gpubus", "keys", "create", user, "--role", "user", "--role", "node"
        )
        return json.loads(out.stdout)["api_key"]

    def live_nodes(self, key: str) -> list[dict[str, Any]]:
        with self.client(key) as c:
            return c.get("/api/v1/status/workers").json()["nodes"]

    def job(self, key: str, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None while the gateway answers 503 (the bus
        is electing a leader or reconnecting: ask again)."""
        with self.client(key) as c:
            return read_job(c, job_id)

    def submit_file(self, key: str, path: Path, *, gpu: bool) -> dict[str, Any]:
        with self.client(key) as c, path.open("rb") as f:
            r = c.post("/api/v1/jobs", files={"file": (path.name, f)}, data={"gpu": json.dumps(gpu)})
        assert r.status_code == 202, r.text
        return r.json()


def read_job(client: httpx.Client, job_id: str, unavailable: list[str] | None = None) -> dict[str, Any] | None:
    """A job's record as any client should read it: None on a 503 (counted
    into `unavailable`), the record on a 200, and any other answer fails
    with its body (a 404 would be an accepted job lost)."""
    r = client.get(f"/api/v1/jobs/{job_id}")
    if r.status_code == 503:
        if unavailable is not None:
            unavailable.append(job_id)
        return None
    assert r.status_code == 200, (job_id, r.status_code, r.text)
    return r.json()
