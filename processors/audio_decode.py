"""Decoding any media PyAV opens into 16 kHz mono float32 for Whisper.

The samples are faster-whisper's `decode_audio`'s, bit for bit (the same
resampler to 16-bit mono, the same grouping of frames), but without the
full garbage collection it runs on every call. It ran that to free PyAV
resamplers left in reference cycles (faster-whisper issue 390); PyAV 18.0
and 18.1.0 leave none, 18.1.1 its filter graph (pinned out in
pyproject.toml; `tests/test_audio_decode.py` checks that a decode leaves no
PyAV object to the cyclic GC). In a node the collection walked every
object the process had made since its models loaded, holding the GIL:
in a packing node, where the next clips decode while the engine works,
it was 81 % of the samples in which any thread held the GIL, and the
engine's own Python (segments, word timings) waited behind it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.audio.fifo
import av.audio.resampler
import av.container
import numpy as np

from schemas.errors import DECODE_FAILED, NO_AUDIO_TRACK, JobFailed

SAMPLE_RATE = 16_000
# FFmpeg's last-resort demuxers: they "open" any bytes as text art, so a file
# they claim is not media at all (rather than a video without sound).
TEXT_ART_FORMATS = frozenset({"bin", "tty", "ansi", "xbin", "idf", "adf", "data"})


# Frames are resampled this many samples at a time: faster-whisper's grouping,
# fewer and larger resampler calls than one per decoded frame (about 1,000 samples).
GROUP_SAMPLES = 500_000
# What PyAV raises for bytes it cannot open or read as media.
NOT_MEDIA = (av.FFmpegError, OSError, ValueError, IndexError)


def decode(path: Path) -> np.ndarray:
    """Raises JobFailed with a code the user can act on. The file is opened
    once: what it holds is checked, then its first audio stream decoded."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except NOT_MEDIA as e:
        raise _not_media(e) from e
    with container:
        try:
            _check_has_audio(container)
        except NOT_MEDIA as e:
            raise _not_media(e) from e
        try:
            audio = _samples(container)
        except (*NOT_MEDIA, RuntimeError) as e:
            raise JobFailed(DECODE_FAILED, f"could not decode the audio ({type(e).__name__}: {e})") from e
    if audio.size == 0:
        raise JobFailed(DECODE_FAILED, "the audio track is empty")
    return audio


def _not_media(e: Exception) -> JobFailed:
    return JobFailed(DECODE_FAILED, f"not a media file PyAV can decode ({type(e).__name__})")


def _check_has_audio(container: av.container.InputContainer) -> None:
    if not container.streams.audio:
        kinds = ", ".join(sorted({s.type for s in container.streams}))
        if not kinds or container.format.name in TEXT_ART_FORMATS:
            raise JobFailed(DECODE_FAILED, f"not a media file: no streams found ({container.format.name})")
        raise JobFailed(NO_AUDIO_TRACK, f"the file has no audio track (streams: {kinds})")


def _samples(container: av.container.InputContainer) -> np.ndarray:
    """The first audio stream, resampled to 16-bit mono at SAMPLE_RATE, as
    float32 in [-1, 1). A frame the decoder calls invalid is skipped, as
    faster-whisper does."""
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    for group in _grouped(_valid_frames(container.decode(audio=0))):
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(group))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))  # what it still holds
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    # Peak memory about 6 bytes a sample (an hour is 58 M samples): the
    # 16-bit chunks go once joined, the float copy is scaled in place.
    joined = np.concatenate(chunks)
    chunks.clear()
    audio = joined.astype(np.float32)
    del joined
    audio /= 32768.0
    return audio


def _valid_frames(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """A damaged frame costs its few milliseconds of audio, not the job."""
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _grouped(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """Frames joined into ones of GROUP_SAMPLES (the last one shorter)."""
    fifo = av.audio.fifo.AudioFifo()
    for frame in frames:
        frame.pts = None  # the fifo checks timestamps are continuous; decoded ones need not be
        fifo.write(frame)
        if fifo.samples >= GROUP_SAMPLES and (group := fifo.read()) is not None:
            yield group
    if (rest := fifo.read()) is not None:
        yield rest
