"""Benchmark 6: what speaker diarization costs, and what a node adds to it.

tests/data/long.wav as a diarized job two ways, alternated so drift on a
shared machine hits both alike: through a real `gpubus cpu-node` (upload
through the gateway, queue, fetch, decode, Whisper with word times, the
offline diarization engine, store, succeeded) and the same libraries called
directly in this process (decode, faster-whisper's bundled tiny.en on
cpu/int8 with word times, the offline engine, speakers put on the words).
Reported: the offline engine's real-time factor (seconds of work per second
of audio) and its share of the job, node ÷ bare for one job at a time
(target >= 0.95: latency, each job's upload, queueing, fetch and result
included), and the node's diarization step over the bare engine's. Then
what a user with a backlog sees: `--queue` jobs submitted at once and
waited for together, the node at its default concurrency and prefetch,
against bare running as many one after another (node ÷ bare throughput on
a queue). One warm-up each first: the node loads its engine on its first
diarized job, and librosa's numba kernels compile on their first call.

    python -m bench.diarization [--rounds 3] [--queue 4] [--clip SECONDS]
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from bench import common
from processors import audio_decode, heap
from processors.diarization import assign_speakers
from processors.diarization_offline import OfflineEngine
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.diarization import DiarizeOptions
from schemas.jobs import TranscribeOptions
from testkit.harness import TESTDATA, submit_file, wait_job

T = TypeVar("T")
DIARIZE = DiarizeOptions(diarize=True)
WHISPER = TranscribeOptions(language="en", word_timestamps=True)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Bare:
    """The libraries a node runs for a diarized job, configured as the CPU
    node configures them, its heap too: the loaded engines frozen out of the
    cyclic GC (processors/heap.py), so the full collection in each decode
    is as cheap here as on the node and the ratio is the bus's own cost."""

    def __init__(self) -> None:
        self.whisper = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
        self.engine = OfflineEngine(device="cpu")
        heap.freeze_loaded("the bare engines")

    def job(self, path: Path) -> tuple[float, float, float, int]:
        """(whole job seconds, Whisper seconds, diarization seconds, speakers)."""
        t0 = time.perf_counter()
        audio = audio_decode.decode(path)
        whisper_s, transcript = timed(
            lambda: self.whisper.transcribe(
                audio, WHISPER, on_segment=lambda *_, **__: None, cancelled=threading.Event()
            )
        )
        diarize_s, turns = timed(lambda: self.engine.diarize(audio, DIARIZE))
        result = assign_speakers(transcript, turns, self.engine.name)
        return time.perf_counter() - t0, whisper_s, diarize_s, len(result.speakers)


def through_node(c, path: Path) -> tuple[float, float, float]:
    """(wall seconds from upload to succeeded, the node's own decode + Whisper
    + diarization seconds, its diarization step's seconds)."""
    t0 = time.perf_counter()
    job = submit_file(c, path, options=json.dumps({"diarize": True, "language": "en"}))
    final = wait_job(c, job["job_id"], timeout_s=1800)
    wall = time.perf_counter() - t0
    assert final["status"] == "succeeded", final
    (stage,) = final["summary"]["stages"]
    return wall, final["summary"]["processing_s"], stage["processing_s"]


def queue_through_node(c, path: Path, n: int) -> float:
    """Seconds from the first upload to the last of `n` jobs succeeded, all
    submitted at once (the node works on the first while the rest upload)."""
    t0 = time.perf_counter()
    options = json.dumps({"diarize": True, "language": "en"})
    jobs = [submit_file(c, path, options=options)["job_id"] for _ in range(n)]
    finals = [wait_job(c, job_id, timeout_s=1800) for job_id in jobs]
    assert all(f["status"] == "succeeded" for f in finals), finals
    return time.perf_counter() - t0


def cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of a process so far (this one by default),
    all its threads: what a job cost in work, whatever else ran meanwhile."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@dataclass
class Totals:
    """Sums over the rounds; each round runs bare and node in turn, the
    order alternating (bare first in even rounds), so drift hits both alike."""

    bare_s: float = 0.0
    whisper_s: float = 0.0
    diarize_s: float = 0.0
    bare_cpu_s: float = 0.0
    node_s: float = 0.0
    node_work_s: float = 0.0
    node_diarize_s: float = 0.0
    node_cpu_s: float = 0.0
    speakers: int = 0
    bare_queue_s: float = 0.0
    node_queue_s: float = 0.0

    def bare_job(self, bare: Bare, path: Path) -> None:
        cpu0 = cpu_s()
        job_s, w_s, d_s, self.speakers = bare.job(path)
        self.bare_cpu_s += cpu_s() - cpu0
        self.bare_s, self.whisper_s, self.diarize_s = self.bare_s + job_s, self.whisper_s + w_s, self.diarize_s + d_s

    def node_job(self, c, path: Path, node_pid: int) -> None:
        cpu0 = cpu_s(node_pid)
        wall, work, step = through_node(c, path)
        self.node_cpu_s += cpu_s(node_pid) - cpu0
        self.node_s, self.node_work_s, self.node_diarize_s = (
            self.node_s + wall,
            self.node_work_s + work,
            self.node_diarize_s + step,
        )

    def one_round(self, i: int, bare: Bare, c, path: Path, node_pid: int, queue: int) -> None:
        sides = [lambda: self.bare_job(bare, path), lambda: self.node_job(c, path, node_pid)]
        if queue:
            sides += [lambda: self.bare_queue(bare, path, queue), lambda: self.node_queue(c, path, queue)]
        for side in sides if i % 2 == 0 else sides[::-1]:
            side()

    def bare_queue(self, bare: Bare, path: Path, n: int) -> None:
        self.bare_queue_s += sum(bare.job(path)[0] for _ in range(n))

    def node_queue(self, c, path: Path, n: int) -> None:
        self.node_queue_s += queue_through_node(c, path, n)


def measure(args, path: Path, root: Path) -> Totals:
    """The stack up, one warm-up each, then `args.rounds` alternating rounds."""
    bare = Bare()
    totals = Totals()
    with (
        common.nats_server(root, sync=args.nats_sync) as server,
        common.gateway(server, root, max_upload_mb=2048) as gw,
    ):
        key = gw.create_key("bench")
        with common.nodes(gw, 1, key=key, name="diarize") as (node,), gw.client(key) as c:
            through_node(c, path)  # warm-up: the node loads its engine, the page cache fills
            bare.job(path)
            for i in range(args.rounds):
                totals.one_round(i, bare, c, path, node.pid, args.queue)
    return totals


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="bare / node alternations")
    p.add_argument("--queue", type=int, default=4, help="jobs submitted at once for the queue throughput (0: skip)")
    p.add_argument("--clip", type=float, default=0.0, help="use only the first N seconds of long.wav (smoke tests)")
    args = p.parse_args()
    rep = common.Report("diarization")
    with common.workdir(args.workdir) as root:
        path = TESTDATA / "long.wav"
        if args.clip:
            path = common.clip_wav(path, root / "clip.wav", args.clip)
        media_s = len(audio_decode.decode(path)) / audio_decode.SAMPLE_RATE
        print(f"diarization: {path.name} {media_s:.0f}s, {args.rounds} rounds", flush=True)
        t = measure(args, path, root)
    report(rep, t, args.rounds, args.queue, media_s)
    return rep.finish(args.json)


def report(rep: common.Report, t: Totals, n: int, queue: int, media_s: float) -> None:
    rep.row("bare: decode + whisper words + offline diarization", seconds=t.bare_s / n, media_s=media_s)
    rep.row("bare: offline diarization alone", seconds=t.diarize_s / n, media_s=media_s, speakers=t.speakers)
    rep.row("bare: faster-whisper tiny.en, words", seconds=t.whisper_s / n, media_s=media_s)
    rep.row("gpubus cpu-node, diarized job (upload to succeeded)", seconds=t.node_s / n, media_s=media_s)
    rep.row("CPU seconds per diarized job", bare=t.bare_cpu_s / n, node_process=t.node_cpu_s / n)
    rep.ratio(
        "offline diarization seconds / media seconds (RTF)",
        t.diarize_s / n / media_s,
        target="(reported; < 1 = faster than real time)",
        ok=None,
    )
    rep.ratio("diarization seconds / transcription seconds", t.diarize_s / t.whisper_s, target="(reported)", ok=None)
    rep.ratio(
        "node's own work seconds / its wall seconds",
        t.node_work_s / t.node_s,
        target="(reported; 1 = no bus overhead; one process at one time, immune to drift)",
        ok=None,
    )
    rep.ratio(
        "node's diarization step / bare engine seconds", t.node_diarize_s / t.diarize_s, target="(reported)", ok=None
    )
    rep.ratio(
        "bare CPU seconds / the node process's, per job",
        t.bare_cpu_s / t.node_cpu_s,
        target="(reported; work done, immune to other load; gateway and nats-server not counted)",
        ok=None,
    )
    ratio = t.bare_s / t.node_s
    rep.ratio("node / bare throughput, diarized job", ratio, target=">= 0.95", ok=ratio >= 0.95)
    if queue:
        rep.row(f"bare: {queue} diarized jobs one after another", seconds=t.bare_queue_s / n, jobs=queue)
        rep.row(
            f"gpubus cpu-node, {queue} diarized jobs queued at once (first upload to last succeeded)",
            seconds=t.node_queue_s / n,
            jobs=queue,
        )
        ratio = t.bare_queue_s / t.node_queue_s
        rep.ratio(
            f"node / bare throughput, a queue of {queue} diarized jobs", ratio, target=">= 0.95", ok=ratio >= 0.95
        )


if __name__ == "__main__":
    common.run_main(main)
