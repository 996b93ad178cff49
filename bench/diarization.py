"""Benchmark 6: what speaker diarization costs, engine alone.

The offline engine (Silero VAD + resemblyzer + agglomerative clustering, on
the CPU) over tests/data/long.wav: its real-time factor (seconds of work per
second of audio), and, measured alternately in the same run so drift on a
shared machine hits both alike, the same file's faster-whisper transcription
(the bundled tiny.en, cpu/int8) for scale. One warm-up first: librosa's
numba kernels compile on their first call. The node ÷ bare-library ratio
comes with the node wiring.

    python -m bench.diarization [--rounds 3] [--clip SECONDS]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from bench import common
from processors import audio_decode
from processors.diarization_offline import OfflineEngine
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.diarization import DiarizeOptions
from schemas.jobs import TranscribeOptions
from testkit.harness import TESTDATA

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="diarize / transcribe alternations")
    p.add_argument("--clip", type=float, default=0.0, help="use only the first N seconds of long.wav (smoke tests)")
    args = p.parse_args()
    rep = common.Report("diarization")
    with common.workdir(args.workdir) as root:
        path = TESTDATA / "long.wav"
        if args.clip:
            path = common.clip_wav(path, root / "clip.wav", args.clip)
        audio = audio_decode.decode(path)
    media_s = len(audio) / audio_decode.SAMPLE_RATE
    print(f"diarization: {path.name} {media_s:.0f}s, {args.rounds} rounds", flush=True)
    engine = OfflineEngine(device="cpu")
    whisper = WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))
    opts = DiarizeOptions(diarize=True)
    topts = TranscribeOptions(language="en", word_timestamps=True)
    engine.diarize(audio[: 2 * audio_decode.SAMPLE_RATE], opts)  # warm-up: numba, the VAD session
    diarize_s = transcribe_s = 0.0
    speakers: set[str] = set()
    for _ in range(args.rounds):
        seconds, turns = timed(lambda: engine.diarize(audio, opts))
        diarize_s, speakers = diarize_s + seconds, {t.speaker for t in turns}
        seconds, _ = timed(
            lambda: whisper.transcribe(
                audio, topts, on_segment=lambda d, t, segment=None: None, cancelled=threading.Event()
            )
        )
        transcribe_s += seconds
    rtf = diarize_s / args.rounds / media_s
    rep.row("offline diarization", seconds=diarize_s / args.rounds, media_s=media_s, speakers=len(speakers))
    rep.row("faster-whisper tiny.en, words", seconds=transcribe_s / args.rounds, media_s=media_s)
    rep.ratio(
        "offline diarization seconds / media seconds (RTF)",
        rtf,
        target="(reported; < 1 = faster than real time)",
        ok=None,
    )
    rep.ratio("diarization seconds / transcription seconds", diarize_s / transcribe_s, target="(reported)", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
