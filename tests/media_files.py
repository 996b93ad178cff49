"""Real media files made at test time: with PyAV (FFmpeg's encoders), speech
from a fixture muxed with a small video track, or a video track alone; and
longer speech, a fixture looped."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 10
SIZE = 64


def _video_stream(out: av.container.OutputContainer, codec: str) -> av.video.stream.VideoStream:
    vs = out.add_stream(codec, rate=FPS)
    vs.width = vs.height = SIZE
    vs.pix_fmt = "yuv420p"
    return vs


def _write_video(out, vs, seconds: float) -> None:
    for i in range(int(seconds * FPS)):
        img = np.full((SIZE, SIZE, 3), (i * 7) % 255, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, FPS)
        out.mux(vs.encode(frame))
    out.mux(vs.encode(None))


def make_video(speech: Path, dest: Path, *, vcodec: str, acodec: str, rate: int = 48_000) -> Path:
    """`dest`'s suffix picks the container (.mkv, .webm, .mp4)."""
    with av.open(str(speech)) as src, av.open(str(dest), "w") as out:
        seconds = float(src.duration or 0) / av.time_base
        vs = _video_stream(out, vcodec)
        as_ = out.add_stream(acodec, rate=rate)
        as_.layout = "mono" if acodec != "libopus" else "stereo"
        resampler = av.AudioResampler(
            format=as_.codec_context.codec.audio_formats[0].name, layout=as_.layout.name, rate=rate
        )
        for frame in src.decode(audio=0):
            for f in resampler.resample(frame):
                out.mux(as_.encode(f))
        for f in resampler.resample(None):
            out.mux(as_.encode(f))
        out.mux(as_.encode(None))
        _write_video(out, vs, seconds)
    return dest


def make_video_only(dest: Path, *, seconds: float = 2.0, vcodec: str = "mpeg4") -> Path:
    with av.open(str(dest), "w") as out:
        _write_video(out, _video_stream(out, vcodec), seconds)
    return dest


def wav_of_seconds(src: Path, seconds: float, dest: Path) -> Path:
    """A copy of a WAV file cut or looped to `seconds`: long enough that a
    fast node is still mid-job when the test stops it (30 s of speech took
    the tiny model only 1.4 s once, and the job finished before the stop)."""
    with wave.open(str(src), "rb") as r, wave.open(str(dest), "wb") as w:
        w.setparams(r.getparams())
        frames, want = (
            r.readframes(r.getnframes()),
            int(r.getframerate() * seconds) * r.getsampwidth() * r.getnchannels(),
        )
        w.writeframes((frames * (want // len(frames) + 1))[:want])
    return dest


def silence_wav(dest: Path, *, seconds: float = 5.0, rate: int = 16_000) -> Path:
    """Room tone: no speech, only faint noise (-50 dBFS), as a quiet
    recording has. Digital zeros give Whisper nothing to decode at all, and
    some quieter noise has every window dropped as silence (no segments)."""
    noise = np.random.default_rng(0).standard_normal(int(rate * seconds)) * 0.003
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((noise * 32767).astype("<i2").tobytes())
    return dest


def raw_pcm(src: Path, rate: int = 16_000) -> bytes:
    """Headerless 16 kHz mono s16le PCM, as Bazarr sends it (`encode=false`)."""
    from faster_whisper.audio import decode_audio

    audio = decode_audio(str(src), sampling_rate=rate)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
