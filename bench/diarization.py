"""Benchmark 6: what speaker diarization costs, and what a node adds to it.

tests/data/long.wav as a diarized job two ways, alternated so drift on a
shared machine hits both alike: through a real `gpubus cpu-node` (upload
through the gateway, queue, fetch, decode, Whisper with word times, the
offline diarization engine, store, succeeded) and the same libraries called
directly in this process (decode, faster-whisper's bundled tiny.en on
cpu/int8 with word times, the offline engine, speakers put on the words).
Reported: the offline engine's real-time factor (seconds of work per second
of audio) and its share of the job, node ÷ bare throughput (target >= 0.95),
and the node's diarization step over the bare engine's. One warm-up each
first: the node loads its engine on its first diarized job, and librosa's
numba kernels compile on their first call.

    python -m bench.diarization [--rounds 3] [--clip SECONDS]
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench import common
from processors import audio_decode
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
    """The libraries a node runs for a diarized job, configured as the CPU node configures them."""

    def __init__(self) -> None:
        self.whisper = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
        self.engine = OfflineEngine(device="cpu")

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


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="bare / node alternations")
    p.add_argument("--clip", type=float, default=0.0, help="use only the first N seconds of long.wav (smoke tests)")
    args = p.parse_args()
    rep = common.Report("diarization")
    with common.workdir(args.workdir) as root:
        path = TESTDATA / "long.wav"
        if args.clip:
            path = common.clip_wav(path, root / "clip.wav", args.clip)
        media_s = len(audio_decode.decode(path)) / audio_decode.SAMPLE_RATE
        print(f"diarization: {path.name} {media_s:.0f}s, {args.rounds} rounds", flush=True)
        bare = Bare()
        bare_s = whisper_s = diarize_s = node_s = node_work_s = node_diarize_s = 0.0
        speakers = 0
        with (
            common.nats_server(root, sync=args.nats_sync) as server,
            common.gateway(server, root, max_upload_mb=2048) as gw,
        ):
            key = gw.create_key("bench")
            with common.nodes(gw, 1, key=key, name="diarize") as _, gw.client(key) as c:
                through_node(c, path)  # warm-up: the node loads its engine, the page cache fills
                bare.job(path)
                for _ in range(args.rounds):
                    job_s, w_s, d_s, speakers = bare.job(path)
                    bare_s, whisper_s, diarize_s = bare_s + job_s, whisper_s + w_s, diarize_s + d_s
                    wall, work, step = through_node(c, path)
                    node_s, node_work_s, node_diarize_s = node_s + wall, node_work_s + work, node_diarize_s + step
    n = args.rounds
    rep.row("bare: decode + whisper words + offline diarization", seconds=bare_s / n, media_s=media_s)
    rep.row("bare: offline diarization alone", seconds=diarize_s / n, media_s=media_s, speakers=speakers)
    rep.row("bare: faster-whisper tiny.en, words", seconds=whisper_s / n, media_s=media_s)
    rep.row("gpubus cpu-node, diarized job (upload to succeeded)", seconds=node_s / n, media_s=media_s)
    rep.ratio(
        "offline diarization seconds / media seconds (RTF)",
        diarize_s / n / media_s,
        target="(reported; < 1 = faster than real time)",
        ok=None,
    )
    rep.ratio("diarization seconds / transcription seconds", diarize_s / whisper_s, target="(reported)", ok=None)
    rep.ratio(
        "node's own work seconds / its wall seconds",
        node_work_s / node_s,
        target="(reported; 1 = no bus overhead; one process at one time, immune to drift)",
        ok=None,
    )
    rep.ratio("node's diarization step / bare engine seconds", node_diarize_s / diarize_s, target="(reported)", ok=None)
    rep.ratio("node / bare throughput, diarized job", bare_s / node_s, target=">= 0.95", ok=bare_s / node_s >= 0.95)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
