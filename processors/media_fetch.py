"""Fetching the media of a URL job with yt-dlp, within limits.

The download runs in a child process (processors/fetch_child.py) that this
module watches: it enforces the time limit and cancellation by killing the
child, turns its byte counts into proof-of-life for the job's lease, and maps
its outcome onto the job errors a node understands. The size limit is
enforced inside the child, as bytes arrive.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import JobCancelled, JobFailed, JobRetryable

log = logging.getLogger("gpubus.processors.fetch")

DOWNLOAD_TIMEOUT = "DOWNLOAD_TIMEOUT"
DOWNLOAD_CRASHED = "DOWNLOAD_CRASHED"
POLL_S = 0.25
RETRY_DELAY_S = 5.0
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True)
class FetchConfig:
    max_bytes: int
    timeout_s: float
    allow_private: bool = False
    socket_timeout_s: float = 30.0


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    title: str | None = None
    extractor: str | None = None


def _child_env() -> dict[str, str]:
    """No proxy settings reach yt-dlp: a proxy would resolve names beyond the guard."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def fetch(
    url: str,
    out_dir: Path,
    cfg: FetchConfig,
    *,
    cookiefile: Path | None,
    on_progress: Callable[[int], None],
    cancelled: threading.Event,
) -> Fetched:
    spec = {
        "url": url,
        "out_dir": str(out_dir),
        "max_bytes": cfg.max_bytes,
        "allow_private": cfg.allow_private,
        "socket_timeout_s": min(cfg.socket_timeout_s, cfg.timeout_s),
        "cookiefile": str(cookiefile) if cookiefile else None,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "processors.fetch_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_child_env(),
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        outcome = _watch(proc, cfg.timeout_s, on_progress, cancelled)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return _result(outcome)


def _watch(
    proc: subprocess.Popen, timeout_s: float, on_progress: Callable[[int], None], cancelled: threading.Event
) -> dict[str, Any] | None:
    """Read the child's lines until its outcome; kill it at the deadline or on cancel."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            if cancelled.is_set():
                raise JobCancelled()
            if time.monotonic() > deadline:
                raise JobFailed(DOWNLOAD_TIMEOUT, f"the download took longer than {timeout_s:.0f}s")
            if not sel.select(POLL_S):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return None  # the child died without an outcome
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "ok" in msg:
                    return msg
                on_progress(int(msg.get("progress") or 0))
    finally:
        sel.close()


def _result(outcome: dict[str, Any] | None) -> Fetched:
    if outcome is None:
        raise JobRetryable(DOWNLOAD_CRASHED, "the download process died", delay_s=RETRY_DELAY_S)
    if not outcome["ok"]:
        if outcome.get("transient"):
            raise JobRetryable(outcome["code"], outcome["message"], delay_s=RETRY_DELAY_S)
        raise JobFailed(outcome["code"], outcome["message"])
    return Fetched(
        path=Path(outcome["path"]),
        size=int(outcome["size"]),
        title=outcome.get("title"),
        extractor=outcome.get("extractor"),
    )
