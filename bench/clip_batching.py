"""Benchmark: short clips of many jobs decoded in one batch.

64 clips of 5–10 s cut from tests/data/long.wav (as WAV files, made at
bench time) go through the offline tiny.en on this CPU in four ways, all in
one run:

- bare faster-whisper, one clip at a time (the baseline);
- the engine with its clip batch (processors/clip_batcher.py) fed by as
  many threads as the batch holds;
- a real GPU node (`--device cpu`) with GPUBUS_NODE_CONCURRENCY = the batch
  and its clip batch off, then on: every clip a job through the gateway.

Throughput = media seconds per wall second. On the CPU the encoder, which
runs the same 30 s window whatever the clip's length, is most of the cost
and gains nothing from a batch; the decoder's steps do. On a GPU a batch
of rows is nearly free, which is why it is on by default only there.

    python -m bench.clip_batching [--clips 64] [--batch 8]
"""

from __future__ import annotations

import re
import threading
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import common
from processors import audio_decode
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.jobs import TranscribeOptions
from testkit.harness import TESTDATA, submit_file, wait_job

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


def engine_throughput(clips: list[np.ndarray], batch: int) -> tuple[float, float]:
    """(media s per wall s, mean clips per batch) of the engine, one at a time when batch is 0."""
    engine = WhisperEngine(
        EngineConfig(model=None, device="cpu", compute_type="int8", workers=max(1, batch), clip_batch=batch)
    )
    opts = TranscribeOptions(language="en")

    def one(audio: np.ndarray) -> None:
        assert engine.transcribe(audio, opts, on_segment=lambda *_, **__: None, cancelled=NEVER).text

    one(clips[0])  # warm
    t0 = time.perf_counter()
    if batch:
        with ThreadPoolExecutor(batch) as pool:
            list(pool.map(one, clips))
    else:
        for audio in clips:
            one(audio)
    wall = time.perf_counter() - t0
    media = sum(len(a) for a in clips) / audio_decode.SAMPLE_RATE
    mean = engine.batcher.calls / max(1, engine.batcher.batches) if engine.batcher else 1.0
    return media / wall, mean


BATCH_LINE = re.compile(r"decoded (\d+) clips in one batch")


def node_throughput(
    gw, key: str, paths: list[Path], media_s: float, *, batch: int, clip_batch: int
) -> tuple[float, float]:
    """(media s per wall s, mean clips per batch from the node's log; 1 when off)."""
    with (
        common.nodes(
            gw, 1, "gpu", key=key, name=f"clips{clip_batch}", node_concurrency=batch, clip_batch=clip_batch
        ) as (node,),
        gw.client(key) as c,
    ):
        assert wait_job(c, submit_file(c, paths[0], gpu=True)["job_id"], timeout_s=120)["status"] == "succeeded"
        t0 = time.perf_counter()
        jobs = [submit_file(c, p, gpu=True)["job_id"] for p in paths]
        for job_id in jobs:
            final = wait_job(c, job_id, timeout_s=900)
            assert final["status"] == "succeeded" and final["lane"] == "gpu", final
        wall = time.perf_counter() - t0
        sizes = [int(n) for n in BATCH_LINE.findall(node.log())]
        return media_s / wall, (sum(sizes) / len(sizes) if sizes else 1.0)


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="clips per batch, and the node's concurrency")
    args = p.parse_args()
    rep = common.Report("clip_batching")
    with common.workdir(args.workdir) as root:
        paths = make_clips(root, args.clips)
        audio = [audio_decode.decode(p) for p in paths]
        media_s = sum(len(a) for a in audio) / audio_decode.SAMPLE_RATE
        print(f"clip_batching: {len(paths)} clips, {media_s:.0f} media s, batch {args.batch}", flush=True)
        alone, _ = engine_throughput(audio, 0)
        batched, mean = engine_throughput(audio, args.batch)
        rep.row("engine, one clip at a time", media_s_per_wall_s=alone)
        rep.row(f"engine, clip batch {args.batch}", media_s_per_wall_s=batched, mean_batch=mean)
        with common.nats_server(root, sync=args.nats_sync) as server, common.gateway(server, root) as gw:
            key = gw.create_key("bench")
            node_off, _ = node_throughput(gw, key, paths, media_s, batch=args.batch, clip_batch=0)
            node_on, node_mean = node_throughput(gw, key, paths, media_s, batch=args.batch, clip_batch=args.batch)
        rep.row(f"node, concurrency {args.batch}, clip batch off", media_s_per_wall_s=node_off)
        rep.row(
            f"node, concurrency {args.batch}, clip batch {args.batch}", media_s_per_wall_s=node_on, mean_batch=node_mean
        )
    rep.ratio("engine batched / one at a time", batched / alone, target=">= 1.5 on this CPU", ok=batched / alone >= 1.5)
    rep.ratio("node batch on / off", node_on / node_off, target="(reported)", ok=None)
    rep.ratio("node batch on / engine one at a time", node_on / alone, target="(reported)", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
