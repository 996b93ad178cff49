"""Real processes for tests and benchmarks: gateways and nodes started as
`gpubus ...` subprocesses against a real nats-server, so fault tests can
kill them; the speech fixtures; waiting for jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ops.embedded_nats import NatsServer, free_port
from schemas.jobs import TERMINAL

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO / "tests" / "data"  # speech fixtures (WAV, MP4, expected .txt), part of the repository
ADMIN_TOKEN = "adm_test_token_0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def expected_text(name: str) -> str:
    return (TESTDATA / f"{name}.txt").read_text().strip()


def words(text: str) -> set[str]:
    return {w.strip(".,!?'\"").lower() for w in text.split() if w.strip(".,!?'\"")}


@dataclass
class Proc:
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        assert self.proc is not None  # alive() above
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def base_env(nats_url: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    env.update(
        GPUBUS_NATS_URL=nats_url,
        GPUBUS_ADMIN_TOKEN=ADMIN_TOKEN,
        GPUBUS_REGISTRY_TTL="3",
        GPUBUS_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"GPUBUS_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@dataclass
class Gateway:
    nats_url: str
    workdir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    proc: Proc | None = None
    issuer_seed: str | None = None  # the server's auth callout issuer, when auth is on
    system_url: str | None = None
    xkey_seed: str | None = None  # the callout's curve key, when the server seals requests

    @classmethod
    def on(cls, server: NatsServer, workdir: Path, **settings: Any) -> Gateway:
        """A gateway for `server`, as its auth callout when authorization is on."""
        seed = server.auth.issuer_seed if server.auth else None
        xkey = server.auth.xkey_seed if server.auth else None
        return cls(
            server.url, workdir, settings=settings, issuer_seed=seed, system_url=server.system_url, xkey_seed=xkey
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self.port = self.port or free_port()
        env = base_env(self.nats_url, port=self.port, host="127.0.0.1", **self.settings)
        if self.issuer_seed:
            env["GPUBUS_NATS_ISSUER_SEED"] = self.issuer_seed
        if self.system_url:
            env["GPUBUS_NATS_SYSTEM_URL"] = self.system_url
        if self.xkey_seed:
            env["GPUBUS_NATS_XKEY_SEED"] = self.xkey_seed
        self.proc = Proc(["gateway"], env, self.workdir / f"gateway-{self.port}.log").start()
        wait_until(lambda: _ready(self.url), timeout_s=30, what=f"gateway {self.url} ready", proc=self.proc)
        return self

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=ADMIN_HEADERS, timeout=30)

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def create_key(self, user: str, roles: tuple[str, ...] = ("user", "node"), **body: Any) -> str:
        with self.admin() as c:
            r = c.post("/api/v1/auth/keys", json={"user_id": user, "roles": list(roles), **body})
            assert r.status_code == 201, r.text
            return r.json()["api_key"]

    def live_nodes(self) -> list[dict[str, Any]]:
        with self.admin() as c:
            return c.get("/api/v1/status/workers").json()["nodes"]

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


async def connect_as_node(server: NatsServer, key: str, owner: str, **options: Any):
    """A NATS connection the way a user's node makes one (its key as the
    token, its owner's inbox), to act as that node, or as a hostile one.
    Its JetStream is `nc.jetstream(prefix=node_permissions.NODE_JS_API)`."""
    import nats

    from bus import node_permissions

    return await nats.connect(
        server.public_url,
        token=key,
        inbox_prefix=node_permissions.inbox_prefix(owner),
        **({"allow_reconnect": False, "connect_timeout": 5} | options),
    )


def stop_all(procs: list[Proc], timeout_s: float = 15) -> None:
    """SIGTERM every process at once and give them one shared grace period,
    so teardown costs the slowest drain, not the sum of them."""
    procs = [p for p in procs if p is not None and p.alive()]
    for p in procs:
        p.signal(signal.SIGCONT)
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.alive():
            p.kill()
        elif p.proc is not None:
            p.proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_node(
    gw: Gateway, kind: str, *, key: str | None = None, shared: bool = False, name: str = "node", **settings: Any
) -> Proc:
    """`kind` is "gpu" (run with --device cpu: no GPU here) or "cpu"."""
    args = ["gpu-node", "--device", "cpu"] if kind == "gpu" else ["cpu-node"]
    if shared:
        args.append("--shared")
    env = base_env(gw.nats_url, gateway_url=gw.url, **settings)
    if key:
        env["GPUBUS_API_KEY"] = key
    before = {n["node_id"] for n in gw.live_nodes()}
    proc = Proc(args, env, gw.workdir / f"{name}-{free_port()}.log").start()
    wait_until(
        lambda: any(n["node_id"] not in before for n in gw.live_nodes()),
        timeout_s=60,
        what=f"{kind} node registered",
        proc=proc,
    )
    return proc


def ctrl_c_at_default() -> None:
    """`preexec_fn` of a command a test will Ctrl-C: SIGINT at its default in
    the child, as an interactive shell starts a foreground command. A shell
    without job control starts a background command (`pytest … &`) with
    SIGINT ignored, the child inherits that across exec, and Python then
    leaves it ignored: the CLI under test never saw the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until(pred, *, timeout_s: float, what: str, interval_s: float = 0.1, proc: Proc | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"process died waiting for {what}:\n{proc.log()[-3000:]}")
        time.sleep(interval_s)
    tail = f"\n{proc.log()[-3000:]}" if proc else ""
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{tail}")


def submit_file(c: httpx.Client, path: Path, *, gpu: bool = False, **fields: str) -> dict[str, Any]:
    with path.open("rb") as f:
        r = c.post("/api/v1/jobs", files={"file": (path.name, f)}, data={"gpu": str(gpu).lower(), **fields})
    assert r.status_code == 202, r.text
    return r.json()


def wait_job(c: httpx.Client, job_id: str, *, timeout_s: float = 60) -> dict[str, Any]:
    """The job's record once it is finished, by long polls (`?wait=`): no
    polling load on the gateway while a benchmark or test measures a node."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        wait = max(0.0, min(30.0, left))
        r = c.get(f"/api/v1/jobs/{job_id}", params={"wait": round(wait, 3)}, timeout=wait + 15)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in TERMINAL:
            return job
        if left <= 0:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s}s: {job}")


def metrics_page(url: str) -> str:
    """A /metrics page: a gateway's needs the admin token (a node's ignores it)."""
    r = httpx.get(url, headers=ADMIN_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def metric(url: str, name: str, **labels: str) -> float:
    """One sample from a /metrics page (0 when the series does not exist yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = metrics_page(url if url.endswith("/metrics") else f"{url}/metrics")
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
