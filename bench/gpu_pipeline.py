"""Benchmark: does the node keep a GPU-speed engine busy?

On a real GPU Whisper runs at 100-300x real time, so what the node does
around the engine (read the input from the object store, decode and resample
it on the CPU, store the result, report) decides how busy the GPU is. This
runs the real node runtime and the real transcription processor (input
fetch, decoding, prepare/prefetch, result, events) with a stand-in engine
that takes `media seconds / RTFx` of wall time without holding the GIL, over
a queue of jobs whose inputs are 10-minute Opus files made at bench time.
Engine busy time / wall time (first engine start to last engine end) is
printed for a node without prefetch and one with (GPUBUS_NODE_PREFETCH=1,
the GPU node's default), same inputs, same run; the bare engine is 1.0.

    python -m bench.gpu_pipeline [--jobs 50] [--minutes 10] [--rtfx 200]
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import nats
import numpy as np
from prometheus_client import CollectorRegistry

from bench import common
from bus import objects, topology
from bus.metrics import NodeMetrics
from bus.node_runtime import NodeRuntime, new_node_id
from bus.publisher import JobPublisher
from bus.sealing import RecordSeal
from bus.settings import Settings
from processors import audio_decode
from processors.dispatch import ByKind
from processors.transcription import TranscriptionProcessor
from schemas import codec, names
from schemas.events import EventType, JobEvent
from schemas.jobs import JobMessage, StagedInput, TranscribeOptions, new_job_id, now
from schemas.names import Kind, Lane
from schemas.results import Transcript
from testkit.harness import ADMIN_TOKEN, TESTDATA

OWNER = "bench"


@dataclass
class EngineConfig:
    device: str = "cuda-standin"


@dataclass
class StandInEngine:
    """Whisper at `rtfx` times real time: sleeps (GIL released) for the
    clip's length / rtfx and records when it was busy."""

    rtfx: float
    cfg: EngineConfig = field(default_factory=EngineConfig)
    model_name: str = "standin"
    load_seconds: float = 0.0
    busy: list[tuple[float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def transcribe(self, audio: np.ndarray, opts: TranscribeOptions, *, on_segment, cancelled) -> Transcript:
        duration = len(audio) / audio_decode.SAMPLE_RATE
        t0 = time.monotonic()
        time.sleep(duration / self.rtfx)
        on_segment(duration, duration)
        with self._lock:
            self.busy.append((t0, time.monotonic()))
        return Transcript(text="", language="en", duration=duration, segments=[])


def make_input(dest: Path, minutes: float) -> Path:
    """`minutes` of speech (long.wav, looped) as Opus in Ogg, 32 kbit/s."""
    speech = audio_decode.decode(TESTDATA / "long.wav")
    samples = np.tile(speech, int(np.ceil(minutes * 60 * audio_decode.SAMPLE_RATE / len(speech))))
    samples = samples[: int(minutes * 60 * audio_decode.SAMPLE_RATE)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with av.open(str(dest), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48_000)
        stream.bit_rate = 32_000
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = audio_decode.SAMPLE_RATE
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return dest


async def stage(js, data: bytes, count: int) -> list[JobMessage]:
    """`count` jobs of the same input, each its own staged object."""
    jobs = []
    digest = hashlib.sha256(data).hexdigest()
    for _ in range(count):
        job_id = new_job_id()
        staged = StagedInput(
            bucket=names.files_bucket(OWNER),
            object_name=names.input_object(job_id, "talk.ogg"),
            filename="talk.ogg",
            size=len(data),
            sha256=digest,
        )
        await objects.put_bytes(js, staged.bucket, staged.object_name, data)
        jobs.append(
            JobMessage(
                job_id=job_id,
                owner=OWNER,
                queue_owner=OWNER,
                lane=Lane.GPU,
                kind=Kind.AUDIO,
                attempt=1,
                input=staged,
                submitted_at=now(),
            )
        )
    return jobs


async def one_run(url: str, data: bytes, jobs: int, rtfx: float, prefetch: int) -> tuple[float, float]:
    """(engine busy / wall, wall seconds) for `jobs` jobs on one node."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    messages = await stage(js, data, jobs)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    finished: set[str] = set()

    async def on_event(msg) -> None:
        ev = codec.decode(msg.data, JobEvent)
        if ev.type in (EventType.SUCCEEDED, EventType.FAILED):
            assert ev.type is EventType.SUCCEEDED, ev
            finished.add(ev.job_id)
            if len(finished) == jobs and not done.done():
                done.set_result(None)

    await nc.subscribe(f"events.{OWNER}.*", cb=on_event)
    queues = topology.QueueMaker(js, Settings(nats_url=url))
    publisher = JobPublisher(js, RecordSeal.from_secret(ADMIN_TOKEN), give_up_after_s=10, ensure_queue=queues)
    for m in messages:
        await publisher.publish(m)
    engine = StandInEngine(rtfx)
    node_id = new_node_id(Lane.GPU)
    runtime = NodeRuntime(
        nc,
        ByKind([TranscriptionProcessor(engine, node_id=node_id)], device="cuda-standin"),  # type: ignore[arg-type]
        queue_owner=OWNER,
        lane=Lane.GPU,
        capacity=1,
        job_deadline_s=600,
        metrics=NodeMetrics(CollectorRegistry(), node_id=node_id, device="cuda-standin"),
        node_id=node_id,
        handle_signals=False,
        prefetch=prefetch,
    )
    await runtime.start()
    try:
        await asyncio.wait_for(done, 60 + jobs * 30)
    finally:
        await runtime.stop(drain_timeout_s=5)
        await nc.close()
    start, end = min(b[0] for b in engine.busy), max(b[1] for b in engine.busy)
    busy = sum(b[1] - b[0] for b in engine.busy)
    return busy / (end - start), end - start


async def prepare_server(url: str) -> None:
    s = Settings(nats_url=url)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await topology.ensure_core(js, s)
        await topology.ensure_owner(js, s, OWNER)
    finally:
        await nc.close()


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--minutes", type=float, default=10.0, help="length of each input")
    p.add_argument("--rtfx", type=float, default=200.0, help="the stand-in engine's speed, x real time")
    args = p.parse_args()
    rep = common.Report("gpu_pipeline")
    with common.workdir(args.workdir) as root, common.nats_server(root, sync=args.nats_sync) as server:
        data = make_input(root / "talk.ogg", args.minutes).read_bytes()
        t0 = time.perf_counter()
        audio_decode.decode(root / "talk.ogg")
        decode_s = time.perf_counter() - t0
        engine_s = args.minutes * 60 / args.rtfx
        print(
            f"gpu_pipeline: {args.jobs} jobs of {args.minutes:g} min Opus ({len(data) / 2**20:.1f} MiB); "
            f"decode {decode_s:.2f} s, engine {engine_s:.2f} s per job",
            flush=True,
        )
        asyncio.run(prepare_server(server.url))
        ratios = {}
        for prefetch in (0, 1):
            busy, wall = asyncio.run(one_run(server.url, data, args.jobs, args.rtfx, prefetch))
            ratios[prefetch] = busy
            rep.row(f"prefetch {prefetch}", engine_busy_over_wall=busy, wall_s=wall, jobs=args.jobs)
    rep.ratio("engine busy / wall, no prefetch", ratios[0], target="(reported)", ok=None)
    rep.ratio("engine busy / wall, prefetch 1", ratios[1], target=">= 0.95", ok=ratios[1] >= 0.95)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
