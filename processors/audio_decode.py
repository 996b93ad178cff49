"""Decoding any media PyAV opens into 16 kHz mono float32 for Whisper."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from schemas.errors import DECODE_FAILED, NO_AUDIO_TRACK, JobFailed

SAMPLE_RATE = 16_000
# FFmpeg's last-resort demuxers: they "open" any bytes as text art, so a file
# they claim is not media at all (rather than a video without sound).
TEXT_ART_FORMATS = frozenset({"bin", "tty", "ansi", "xbin", "idf", "adf", "data"})


def decode(path: Path) -> np.ndarray:
    """Raises JobFailed with a code the user can act on."""
    from faster_whisper.audio import decode_audio

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = ", ".join(sorted({s.type for s in container.streams}))
                if not kinds or container.format.name in TEXT_ART_FORMATS:
                    raise JobFailed(DECODE_FAILED, f"not a media file: no streams found ({container.format.name})")
                raise JobFailed(NO_AUDIO_TRACK, f"the file has no audio track (streams: {kinds})")
    except JobFailed:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        raise JobFailed(DECODE_FAILED, f"not a media file PyAV can decode ({type(e).__name__})") from e
    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except (av.FFmpegError, OSError, ValueError, IndexError, RuntimeError) as e:
        raise JobFailed(DECODE_FAILED, f"could not decode the audio ({type(e).__name__}: {e})") from e
    if audio.size == 0:
        raise JobFailed(DECODE_FAILED, "the audio track is empty")
    return audio
