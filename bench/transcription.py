"""Benchmark 3: what a node costs on top of the model.

The same audio (tests/data/long.wav, and a longer file made by
concatenating it) through a real `gpubus cpu-node` (upload through the
gateway, queue, fetch, decode, transcribe, store the result, record
succeeded) against bare faster-whisper in this process with the same model
and settings (the bundled tiny.en, cpu/int8, beam 1, temperature 0, English),
alternating the two so drift on a shared machine hits both alike. Also
reported: the node's own decode + transcribe seconds over its wall seconds,
a ratio taken inside one process at one time, so it is immune to that drift.
Throughput = media seconds / wall seconds over a batch of jobs submitted at
once. Then a node with GPUBUS_NODE_CONCURRENCY > 1 gets several jobs at once.

    python -m bench.transcription [--repeat 4] [--jobs 2] [--concurrency 2]
"""

from __future__ import annotations

import time
import wave
from pathlib import Path

from bench import common
from processors import model_paths
from testkit.harness import TESTDATA, submit_file, wait_job


def concatenate(src: Path, dest: Path, times: int) -> Path:
    with wave.open(str(src)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    with wave.open(str(dest), "wb") as out:
        out.setparams(params)
        for _ in range(times):
            out.writeframes(frames)
    return dest


def media_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


class Bare:
    """faster-whisper alone, configured as the CPU node configures it."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        _, load_path = model_paths.resolve(None)
        self.model = WhisperModel(
            load_path, device="cpu", compute_type="int8", num_workers=1, cpu_threads=0, local_files_only=True
        )

    def run(self, paths: list[Path]) -> float:
        t0 = time.perf_counter()
        for path in paths:
            segments, _ = self.model.transcribe(
                str(path),
                language="en",
                task="transcribe",
                beam_size=1,
                temperature=0.0,
                word_timestamps=False,
                vad_filter=False,
            )
            text = "".join(s.text for s in segments)
            assert text.strip(), "bare faster-whisper produced no text"
        return time.perf_counter() - t0


def through_node(c, paths: list[Path]) -> tuple[float, float]:
    """Submit all, wait for all: (wall seconds from the first upload, the
    node's own decode + transcribe seconds for those jobs)."""
    t0 = time.perf_counter()
    jobs = [submit_file(c, p)["job_id"] for p in paths]
    model_s = 0.0
    for job_id in jobs:
        final = wait_job(c, job_id, timeout_s=1800)
        assert final["status"] == "succeeded", final
        model_s += final["summary"]["processing_s"]
    return time.perf_counter() - t0, model_s


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=4, help="the longer file is long.wav this many times")
    p.add_argument("--jobs", type=int, default=2, help="jobs per batch")
    p.add_argument("--rounds", type=int, default=2, help="bare/node alternations per file")
    p.add_argument("--concurrency", type=int, default=2, help="GPUBUS_NODE_CONCURRENCY of the second node")
    p.add_argument("--clip", type=float, default=0.0, help="use only the first N seconds of long.wav (smoke tests)")
    args = p.parse_args()
    rep = common.Report("transcription")
    long_wav = TESTDATA / "long.wav"
    with common.workdir(args.workdir) as root:
        if args.clip:
            long_wav = common.clip_wav(long_wav, root / "clip.wav", args.clip)
        files = {"long.wav": long_wav, f"long x{args.repeat}": concatenate(long_wav, root / "longer.wav", args.repeat)}
        print(
            f"transcription: {', '.join(f'{k} {media_seconds(v):.0f}s' for k, v in files.items())}, "
            f"{args.jobs} jobs per batch",
            flush=True,
        )
        bare = Bare()
        ratios: list[float] = []
        shares: list[float] = []
        with (
            common.nats_server(root, sync=args.nats_sync) as server,
            common.gateway(server, root, max_upload_mb=2048) as gw,
        ):
            key = gw.create_key("bench")
            with common.nodes(gw, 1, key=key, name="asr") as _, gw.client(key) as c:
                through_node(c, [long_wav])  # warm the node and the page cache
                bare.run([long_wav])
                for label, path in files.items():
                    batch = [path] * args.jobs
                    media = media_seconds(path) * len(batch)
                    bare_s = node_s = model_s = 0.0
                    for _ in range(args.rounds):
                        bare_s += bare.run(batch)
                        wall, model = through_node(c, batch)
                        node_s, model_s = node_s + wall, model_s + model
                    bare_tp, node_tp = media * args.rounds / bare_s, media * args.rounds / node_s
                    rep.row(f"bare faster-whisper, {label}", media_s_per_wall_s=bare_tp)
                    rep.row(f"gpubus node, {label}", media_s_per_wall_s=node_tp, model_share_of_wall=model_s / node_s)
                    ratios.append(node_tp / bare_tp)
                    shares.append(model_s / node_s)
            conc_tp = concurrent_batch(gw, key, long_wav, args)
            rep.row(
                f"node concurrency {args.concurrency}, {2 * args.concurrency} x long.wav", media_s_per_wall_s=conc_tp
            )
    for label, share in zip(files, shares, strict=True):
        rep.ratio(
            f"node's model seconds / its wall seconds, {label}",
            share,
            target="(reported; 1 = no bus overhead)",
            ok=None,
        )
    for label, r in zip(files, ratios, strict=True):
        rep.ratio(f"node / bare throughput, {label}", r, target=">= 0.95", ok=r >= 0.95)
    return rep.finish(args.json)


def concurrent_batch(gw, key: str, path: Path, args) -> float:
    jobs = 2 * args.concurrency
    with common.nodes(gw, 1, key=key, name="asr-conc", node_concurrency=args.concurrency), gw.client(key) as c:
        through_node(c, [path])
        wall, _ = through_node(c, [path] * jobs)
    return media_seconds(path) * jobs / wall


if __name__ == "__main__":
    common.run_main(main)
