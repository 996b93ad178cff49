"""What every benchmark needs: a private nats-server, the real gpubus
processes, statistics, and the closing ratio lines.

Every figure a benchmark reports is a ratio of two things measured side by
side in the same run, because absolute times on a shared 2-core machine do
not compare from one run to the next.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ops.embedded_nats import NatsServer
from testkit.harness import Gateway, Proc, start_node

REPO = Path(__file__).resolve().parents[1]


def clip_wav(src: Path, dest: Path, seconds: float) -> Path:
    """The first `seconds` of a WAV file (small inputs for smoke runs)."""
    with wave.open(str(src)) as w:
        params = w.getparams()
        frames = w.readframes(int(seconds * w.getframerate()))
    with wave.open(str(dest), "wb") as out:
        out.setparams(params)
        out.writeframes(frames)
    return dest


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def latency_summary(samples_s: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_s),
        "p50_ms": percentile(samples_s, 50) * 1e3,
        "p99_ms": percentile(samples_s, 99) * 1e3,
        "mean_ms": statistics.fmean(samples_s) * 1e3,
    }


@dataclass
class Report:
    """Rows of measurements, then the ratios (printed last)."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[dict[str, Any]] = field(default_factory=list)

    def row(self, what: str, **values: Any) -> None:
        self.rows.append({"what": what, **values})
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        print(f"  {what:<34} {shown}", flush=True)

    def ratio(self, name: str, value: float, *, target: str, ok: bool | None) -> None:
        self.ratios.append({"ratio": name, "value": value, "target": target, "met": ok})

    def finish(self, json_path: str | None) -> int:
        """Print the ratios last; return 0 (benchmarks never fail on a miss,
        they report it)."""
        if json_path:
            Path(json_path).write_text(json.dumps(self.as_dict(), indent=2))
        for r in self.ratios:
            verdict = "n/a" if r["met"] is None else ("met" if r["met"] else "MISSED")
            print(f"RATIO {self.name}: {r['ratio']} = {r['value']:.3f} (target {r['target']}) {verdict}", flush=True)
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.name,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "rows": self.rows,
            "ratios": self.ratios,
        }


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def machine() -> str:
    return f"{platform.machine()} {psutil.cpu_count()} cores, {psutil.virtual_memory().total // 2**30} GiB, {platform.python_version()}"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--workdir", help="keep server stores and logs here (default: a temp dir, removed)")
    p.add_argument(
        "--nats-sync",
        choices=["always", "default"],
        default="always",
        help="always: gpubus's config (a disk sync per JetStream write); default: nats-server's 2-minute sync",
    )
    return p


@contextlib.contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="gpubus-bench-") as d:
        yield Path(d)


@dataclass
class BenchNatsServer(NatsServer):
    """gpubus's own server config, optionally without `sync_interval:
    always` (then nats-server syncs on its default 2-minute timer), to show
    what the per-write disk sync costs next to a Redis that never syncs."""

    sync_always: bool = True

    def config_text(self) -> str:
        text = super().config_text()
        return text if self.sync_always else text.replace("  sync_interval: always\n", "")


@contextlib.contextmanager
def nats_server(root: Path, name: str = "bench", *, sync: str = "always", http_port: int = 0) -> Iterator[NatsServer]:
    """A private nats-server on a free loopback port, stopped by pid;
    `http_port`: its monitoring endpoint (0: none)."""
    server = BenchNatsServer(store_dir=root / f"nats-{name}", sync_always=sync == "always", http_port=http_port).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def gateway(server: NatsServer, root: Path, **settings: Any) -> Iterator[Gateway]:
    settings.setdefault("enable_noop", "true")
    gw = Gateway(server.url, root, settings=settings).start()
    try:
        yield gw
    finally:
        gw.stop()


@contextlib.contextmanager
def nodes(
    gw: Gateway, count: int, kind: str = "cpu", *, key: str | None, name: str = "node", **settings: Any
) -> Iterator[list[Proc]]:
    """`count` real node processes (`gpubus cpu-node` / `gpu-node --device cpu`);
    with `shared=True` and no key, shared-pool nodes."""
    settings.setdefault("enable_noop", "true")
    started: list[Proc] = []
    try:
        for i in range(count):
            started.append(start_node(gw, kind, key=key, name=f"{name}{i}", **settings))
        yield started
    finally:
        for p in started:
            p.stop()


class RssSampler:
    """Peak resident memory of real processes, sampled from a thread (psutil
    reads /proc), so a benchmark sees what the gateway or node really holds."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.02) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.baseline = {name: p.memory_info().rss for name, p in self._procs.items()}
        self.peak = dict(self.baseline)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, p in self._procs.items():
                try:
                    self.peak[name] = max(self.peak[name], p.memory_info().rss)
                except psutil.Error:
                    pass
            self._stop.wait(self._interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth_mb(self, name: str) -> float:
        return (self.peak[name] - self.baseline[name]) / 2**20


class CpuMeter:
    """CPU seconds (user + system) that named processes, with their
    children (Celery's prefork pool), spend in labelled turns of a run. On a
    2-core machine a pipelined rate is bounded by the CPU every process
    spends per job, so that cost is printed beside the rate it explains."""

    def __init__(self, pids: dict[str, int], *, with_children: tuple[str, ...] = ()) -> None:
        """`with_children`: the names whose child processes count as theirs
        (not the driving process's: every other process here is its child)."""
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._with_children = with_children
        self.spent: dict[str, dict[str, float]] = {}  # label -> process -> CPU seconds
        self.jobs: dict[str, int] = {}

    def _now(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            total = 0.0
            with contextlib.suppress(psutil.Error):
                children = proc.children(recursive=True) if name in self._with_children else []
                for p in [proc, *children]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        total += t.user + t.system
            out[name] = total
        return out

    @contextlib.contextmanager
    def turn(self, label: str, names: tuple[str, ...], jobs: int) -> Iterator[None]:
        """Counts `names`' CPU over the block against `jobs` jobs of `label`."""
        before = self._now()
        yield
        after = self._now()
        spent = self.spent.setdefault(label, {})
        for name in names:
            spent[name] = spent.get(name, 0.0) + after[name] - before[name]
        self.jobs[label] = self.jobs.get(label, 0) + jobs

    def per_job_ms(self, label: str) -> dict[str, float]:
        """Each process's CPU milliseconds per job of `label`, and their sum."""
        jobs = max(1, self.jobs.get(label, 0))
        out = {name: 1000 * s / jobs for name, s in self.spent.get(label, {}).items()}
        out["total"] = sum(out.values())
        return out


SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range")


def sync_counter_missing() -> str | None:
    """Why disk syncs cannot be counted here (None: they can): strace, the
    Debian package, attaches to the processes."""
    return None if shutil.which("strace") else "strace is not installed (apt-get install strace)"


@contextlib.contextmanager
def counting_syncs(pids: list[int]) -> Iterator[dict[str, int]]:
    """How many disk syncs (fsync and kin) `pids` and their threads make
    while the block runs, filled in when it ends. With `sync_interval:
    always` every stored message costs nats-server one, so the count per
    job is what bounds a system's jobs/s on one disk. strace stops the
    processes at every system call, so a block counted is never a block
    timed."""
    out = Path(tempfile.mkstemp(prefix="gpubus-syncs-")[1])
    cmd = ["strace", "-f", "-qq", "-c", "-e", f"trace={','.join(SYNC_CALLS)}", "-o", str(out)]
    for pid in pids:
        cmd += ["-p", str(pid)]
    tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached to every thread before the first job
    counts: dict[str, int] = {}
    try:
        if tracer.poll() is not None:
            raise RuntimeError(f"strace could not attach: {tracer.stderr.read().decode().strip()}")  # type: ignore[union-attr]
        yield counts
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
        counts.update(_strace_summary(out.read_text()))
        out.unlink()


def _strace_summary(text: str) -> dict[str, int]:
    """The calls column of `strace -c`'s table, by system call."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[-1] in SYNC_CALLS and cols[3].isdigit():
            counts[cols[-1]] = int(cols[3])
    return counts


def profiler(out_dir: str | None, pids: dict[str, int]):
    """`with profile(label):` records the given processes with py-spy while
    the block runs (one collapsed-stack file per process and label), or
    does nothing when no directory was asked for."""

    @contextlib.contextmanager
    def profile(label: str) -> Iterator[None]:
        if not out_dir or label not in ("bus", "http"):
            yield
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        spies = [
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "-o",
                    str(Path(out_dir) / f"{label}-{name}-{pid}-{time.monotonic_ns()}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in pids.items()
        ]
        try:
            yield
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(30)

    return profile


def stop_proc(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM a process this benchmark started, SIGKILL it past the grace."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_main(main) -> None:
    """Entry point of a benchmark script: exit code of `main()`."""
    sys.exit(main())
