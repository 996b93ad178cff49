"""A private Redis (Debian's `redis-server`) on a free loopback port, for the
Celery baseline; never the system Redis on 6379. Stopped by pid."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import stop_proc
from ops.embedded_nats import free_port

READY_TIMEOUT_S = 15.0


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass(frozen=True)
class RedisServer:
    url: str
    pid: int


@contextlib.contextmanager
def redis_server(root: Path) -> Iterator[RedisServer]:
    """No persistence: a benchmark broker only."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "redis.log").open("ab")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--protected-mode",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _pong(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {root / 'redis.log'}")
            time.sleep(0.05)
        yield RedisServer(f"redis://127.0.0.1:{port}/0", proc.pid)
    finally:
        stop_proc(proc, 10)
