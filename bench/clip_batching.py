"""Benchmark: short clips of many jobs decoded together, batched or packed.

64 clips of 5–10 s cut from tests/data/long.wav (as WAV files, made at
bench time) go through the offline tiny.en on this CPU in six ways, the
engine's three and the node's three alternating round by round (the
machine is shared, so A and B see the same neighbours):

- bare engine, one clip at a time (the baseline);
- the bare engine fed by as many threads as the batch holds, each clip
  still alone: what a node with its clip batch off does, and the fair
  baseline of a node's on ÷ off (on this CPU several transcriptions at
  once already beat one at a time);
- the engine with its clip batch (processors/clip_batcher.py), one batch
  row per clip, fed by as many threads as the batch holds;
- the same with window packing (processors/window_packing.py): the
  gathered clips laid several to one 30 s window;
- a real GPU node (`--device cpu`) with GPUBUS_NODE_CONCURRENCY = the batch
  and its clip batch off, then batching, then packing: every clip a job
  through the gateway.

Throughput = media seconds per wall second. On the CPU the encoder, which
runs the same 30 s window whatever the clip's length, is about half the
cost and gains nothing from a batch row; packing runs it once per window of
two to four clips. Each node run prints its gatherings (how many held how
many clips): whole ones under load mean the node feeds the engine as the
threads above do. Packed transcripts are compared with the one at a time
ones (word error rate between the two).

    python -m bench.clip_batching [--clips 64] [--batch 8] [--rounds 1]
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import wave
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench import common
from processors import audio_decode
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.jobs import TranscribeOptions
from testkit.harness import TESTDATA, submit_file, wait_job
from testkit.transcripts import word_error_rate

NEVER = threading.Event()


def make_clips(root: Path, n: int, seed: int = 7) -> list[Path]:
    """`n` WAV clips of 5–10 s, consecutive pieces of long.wav (wrapping)."""
    speech = audio_decode.decode(TESTDATA / "long.wav")
    rng = np.random.default_rng(seed)
    paths, pos = [], 0
    for i in range(n):
        length = int(rng.uniform(5.0, 10.0) * audio_decode.SAMPLE_RATE)
        if pos + length > len(speech):
            pos = 0
        pcm = (np.clip(speech[pos : pos + length], -1, 1) * 32767).astype("<i2")
        pos += length
        path = root / f"clip{i:03d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(audio_decode.SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


class EngineRun:
    """One engine configuration, its transcripts of the last round, and its throughput per round."""

    def __init__(self, batch: int, *, pack: bool, threads: int | None = None) -> None:
        self.threads = batch if threads is None else threads
        self.engine = WhisperEngine(
            EngineConfig(
                model=None,
                device="cpu",
                compute_type="int8",
                workers=max(1, self.threads),
                clip_batch=batch,
                clip_pack=pack,
            )
        )
        self.texts: list[str] = []
        self.rates: list[float] = []
        self.cores: list[float] = []  # CPU this process spent per wall second of a round

    def one(self, audio: np.ndarray) -> str:
        text = self.engine.transcribe(
            audio, TranscribeOptions(language="en"), on_segment=lambda *_, **__: None, cancelled=NEVER
        ).text
        assert text
        return text

    def round(self, clips: list[np.ndarray]) -> None:
        t0, cpu0 = time.perf_counter(), time.process_time()
        if self.threads:
            with ThreadPoolExecutor(self.threads) as pool:
                self.texts = list(pool.map(self.one, clips))
        else:
            self.texts = [self.one(audio) for audio in clips]
        media = sum(len(a) for a in clips) / audio_decode.SAMPLE_RATE
        wall = time.perf_counter() - t0
        self.rates.append(media / wall)
        self.cores.append((time.process_time() - cpu0) / wall)

    def mean_batch(self) -> float:
        b = self.engine.batcher
        return b.calls / max(1, b.batches) if b else 1.0

    def clips_per_window(self) -> float:
        return self.engine.packed_clips / max(1, self.engine.packed_windows)


BATCH_LINE = re.compile(r"decoded (\d+) clips in one batch")
BATCH_TIMED = re.compile(r"decoded \d+ clips in one batch in ([\d.]+)s")
PACK_LINE = re.compile(r"packed (\d+) clips into (\d+) windows")


class NodeResult(NamedTuple):
    rate: float  # media s per wall s
    per_group: float  # mean clips per batch row or per window from the node's log, 1 when off
    sizes: list[int]  # the size of each gathering, in order, [] when off
    engine_busy: float  # the gatherings' decode time ÷ the span from the first one's start to the last one's end
    beside_cores: float  # CPU the gateway, server and this client spent meanwhile, in cores (of the machine's two)
    node_cores: float  # CPU the node process spent, in cores


def engine_busy(log: str) -> float:
    """How much of the span of a node's gatherings its engine spent
    decoding them, from the batcher's log lines (each has its end time and
    how long it took). Near 1: the node keeps its engine fed, and what it
    falls short of the bare engine is the decode itself running slower,
    beside the rest of the node or of the stack (`node_cores` and
    `beside_cores` say which: a full GC per input decode, holding the GIL,
    was the node's third more CPU per media second until it went); well
    below 1: the node leaves the engine waiting between gatherings. nan
    when off (no gatherings)."""
    spans = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (m := BATCH_TIMED.match(str(record.get("msg", "")))):
            spans.append((record["ts"] - float(m.group(1)), record["ts"]))
    if not spans:
        return float("nan")
    busy = sum(end - start for start, end in spans)
    return busy / max(1e-9, max(end for _, end in spans) - min(start for start, _ in spans))


def node_throughput(root: Path, paths: list[Path], media_s: float, *, batch: int, mode: str, sync: str) -> NodeResult:
    """What a node whose clip `mode` is off, batch or pack does (`NodeResult`).
    Each run has a NATS server and gateway of its own under `root`: with one
    for all, a later round's jobs were moved off the GPU lane as if no GPU
    node were live. 64 queued jobs can wait past the GPU start deadline on a
    busy machine, and there is no CPU node to move them to: the deadline is
    out of the way."""
    clip = {"off": (0, False), "batch": (batch, False), "pack": (batch, True)}[mode]
    root.mkdir(parents=True)
    with (
        common.nats_server(root, sync=sync) as server,
        common.gateway(server, root, gpu_start_timeout=3600) as gw,
    ):
        return _node_run(gw, server.proc.pid, paths, media_s, batch=batch, mode=mode, clip=clip)


def _node_run(
    gw, server_pid: int, paths: list[Path], media_s: float, *, batch: int, mode: str, clip: tuple[int, bool]
) -> NodeResult:
    """One node with `clip` = (GPUBUS_CLIP_BATCH, GPUBUS_CLIP_PACK), warmed by
    one job, then every clip a job. The CPU the rest of the stack spends
    meanwhile is counted: on one machine it shares the cores the node's
    engine would otherwise have (on a rented GPU box, it runs elsewhere)."""
    key = gw.create_key("bench")
    with (
        common.nodes(
            gw,
            1,
            "gpu",
            key=key,
            name=f"clips-{mode}",
            node_concurrency=batch,
            clip_batch=clip[0],
            clip_pack=str(clip[1]).lower(),
        ) as (node,),
        gw.client(key) as c,
    ):
        assert wait_job(c, submit_file(c, paths[0], gpu=True)["job_id"], timeout_s=120)["status"] == "succeeded"
        warm_log = len(node.log())  # the gatherings counted are the timed jobs' only
        beside = ("gateway", "nats-server", "client")
        pids = {"gateway": gw.proc.pid, "nats-server": server_pid, "client": os.getpid(), "node": node.pid}
        meter = common.CpuMeter(pids)
        t0 = time.perf_counter()
        with meter.turn(mode, (*beside, "node"), len(paths)):
            jobs = [submit_file(c, p, gpu=True)["job_id"] for p in paths]
            for job_id in jobs:
                final = wait_job(c, job_id, timeout_s=900)
                assert final["status"] == "succeeded" and final["lane"] == "gpu", final
        wall = time.perf_counter() - t0
        log = node.log()[warm_log:]
    sizes = [int(n) for n in BATCH_LINE.findall(log)]
    if mode == "pack":
        packs = [(int(n), int(w)) for n, w in PACK_LINE.findall(log)]
        per_group = sum(n for n, _ in packs) / max(1, sum(w for _, w in packs))
    else:
        per_group = sum(sizes) / len(sizes) if sizes else 1.0
    spent = meter.spent[mode]
    beside_cores = sum(spent[name] for name in beside) / wall
    return NodeResult(media_s / wall, per_group, sizes, engine_busy(log), beside_cores, spent["node"] / wall)


def node_figures(got: list[NodeResult]) -> dict[str, float]:
    """What every node row shows, medians over the rounds."""
    return {
        "media_s_per_wall_s": median([r.rate for r in got]),
        "cores": median([r.node_cores for r in got]),
        "beside_cores": median([r.beside_cores for r in got]),
    }


def gatherings(sizes: list[int]) -> str:
    """How many gatherings held how many clips, e.g. "8x7 1x2"."""
    return " ".join(f"{n}x{c}" for n, c in sorted(Counter(sizes).items(), reverse=True)) or "none"


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def agreement(reference: list[str], other: list[str]) -> float:
    """Word error rate of `other` against `reference` over all clips (their words end to end)."""
    return word_error_rate(" ".join(reference), " ".join(other))


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="clips gathered at most, and the node's concurrency")
    p.add_argument("--rounds", type=int, default=1, help="rounds of every way, alternating; medians reported")
    args = p.parse_args()
    rep = common.Report("clip_batching")
    with common.workdir(args.workdir) as root:
        paths = make_clips(root, args.clips)
        audio = [audio_decode.decode(p) for p in paths]
        media_s = sum(len(a) for a in audio) / audio_decode.SAMPLE_RATE
        print(f"clip_batching: {len(paths)} clips, {media_s:.0f} media s, batch {args.batch}", flush=True)
        runs = {
            "alone": EngineRun(0, pack=False),
            "alone_at_once": EngineRun(0, pack=False, threads=args.batch),
            "batch": EngineRun(args.batch, pack=False),
            "pack": EngineRun(args.batch, pack=True),
        }
        for run in runs.values():
            run.one(audio[0])  # warm
        nodes: dict[str, list[NodeResult]] = {"off": [], "batch": [], "pack": []}
        for r in range(args.rounds):
            for name, run in runs.items():
                run.round(audio)
                print(f"round {r}: engine {name} {run.rates[-1]:.1f} media s/s, {run.cores[-1]:.2f} cores", flush=True)
            for mode, got in nodes.items():
                bus = root / f"bus-{mode}-{r}"
                got.append(node_throughput(bus, paths, media_s, batch=args.batch, mode=mode, sync=args.nats_sync))
                res = got[-1]
                print(
                    f"round {r}: node {mode} {res.rate:.1f} media s/s, {res.per_group:.1f} clips a group, "
                    f"gatherings (clips x how many) {gatherings(res.sizes)}, "
                    f"engine busy {res.engine_busy:.2f} of their span, "
                    f"node {res.node_cores:.2f} cores, gateway + server + client {res.beside_cores:.2f}",
                    flush=True,
                )
    alone, at_once, batched, packed = (median(runs[n].rates) for n in ("alone", "alone_at_once", "batch", "pack"))
    cores = {name: median(run.cores) for name, run in runs.items()}
    rep.row("engine, one clip at a time", media_s_per_wall_s=alone, cores=cores["alone"])
    rep.row(f"engine, each clip alone, {args.batch} at once", media_s_per_wall_s=at_once, cores=cores["alone_at_once"])
    rep.row(
        f"engine, clip batch {args.batch}",
        media_s_per_wall_s=batched,
        mean_batch=runs["batch"].mean_batch(),
        cores=cores["batch"],
    )
    rep.row(
        f"engine, clips of up to {args.batch} packed",
        media_s_per_wall_s=packed,
        cores=cores["pack"],
        clips_per_window=runs["pack"].clips_per_window(),
        wer_vs_alone=agreement(runs["alone"].texts, runs["pack"].texts),
    )
    fig = {mode: node_figures(got) for mode, got in nodes.items()}
    rep.row(f"node, concurrency {args.batch}, clips each alone", **fig["off"])
    rep.row(
        f"node, concurrency {args.batch}, clip batch",
        **fig["batch"],
        mean_batch=nodes["batch"][-1].per_group,
        engine_busy=median([r.engine_busy for r in nodes["batch"]]),
    )
    rep.row(
        f"node, concurrency {args.batch}, packing",
        **fig["pack"],
        clips_per_window=nodes["pack"][-1].per_group,
        mean_gathering=float(np.mean(nodes["pack"][-1].sizes)) if nodes["pack"][-1].sizes else 1.0,
        engine_busy=median([r.engine_busy for r in nodes["pack"]]),
    )
    node = {mode: f["media_s_per_wall_s"] for mode, f in fig.items()}
    rep.ratio("engine batched / one at a time", batched / alone, target="(reported)", ok=None)
    rep.ratio("engine packed / one at a time", packed / alone, target=">= 1.5 on this CPU", ok=packed / alone >= 1.5)
    rep.ratio(f"engine packed / each alone {args.batch} at once", packed / at_once, target="(reported)", ok=None)
    rep.ratio("node batch on / off", node["batch"] / node["off"], target="(reported)", ok=None)
    rep.ratio("node packing on / off", node["pack"] / node["off"], target="(reported)", ok=None)
    rep.ratio("node packing on / engine one at a time", node["pack"] / alone, target="(reported)", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
