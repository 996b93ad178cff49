"""Conversations spoken by espeak-ng at test time, with the truth of who
spoke when: diarization needs audio whose speakers are known, and shipping
recorded voices would put people's speech in the repository. Shared by the
engine-level and job-level diarization tests, with the score they use."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processors.diarization import Turn, speaker_at
from schemas.diarization import DiarizedTranscript

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (language + variant) and pitch (0-99)."""

    name: str
    pitch: int
    speed_wpm: int = 165


# Two clearly different voices: a low male variant and a high female one.
VOICE_A = Voice("en-us+m3", pitch=25)
VOICE_B = Voice("en-gb+f4", pitch=80)

# Turns of 3-6 s each (at espeak's speed), alternating A-B-A-B.
TWO_SPEAKER_TURNS: list[tuple[Voice, str]] = [
    (VOICE_A, "Good morning. I wanted to talk about the delivery schedule for next week."),
    (VOICE_B, "Sure. The trucks leave on Tuesday, and the warehouse opens at seven."),
    (VOICE_A, "That works for me. Can we move the second load to Thursday afternoon?"),
    (VOICE_B, "Yes, Thursday is fine. I will call the driver and confirm the time today."),
    (VOICE_A, "Thank you. Please send me the updated plan when it is ready."),
    (VOICE_B, "I will send it this evening, together with the invoice for last month."),
]

ONE_SPEAKER_TEXT = [
    "Welcome to the weekly report. Sales grew in the north and stayed flat in the south.",
    "The new office opens in March, and hiring for the support team continues.",
    "Next week we review the budget and the plans for the summer season.",
]


@dataclass(frozen=True)
class Spoken:
    """Audio and the truth: (start s, end s, speaker index) per turn."""

    audio: np.ndarray
    turns: list[tuple[float, float, int]]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(voice: Voice, text: str) -> np.ndarray:
    """One utterance as 16 kHz float32, with espeak's own leading and trailing
    silence trimmed so that the truth's turn times are the speech's."""
    from faster_whisper.audio import decode_audio

    with tempfile.TemporaryDirectory(prefix="gpubus-espeak-") as d:
        path = Path(d) / "say.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed_wpm), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return np.asarray(audio[loud[0] : loud[-1] + 1] if loud.size else audio, dtype=np.float32)


def conversation(turns: list[tuple[Voice, str]], gap_s: float = 0.6) -> Spoken:
    """The turns one after another with `gap_s` of silence between them."""
    voices: list[Voice] = []
    pieces: list[np.ndarray] = []
    truth: list[tuple[float, float, int]] = []
    gap = np.zeros(int(gap_s * SAMPLE_RATE), dtype=np.float32)
    t = gap_s
    pieces.append(gap)
    for voice, text in turns:
        if voice not in voices:
            voices.append(voice)
        audio = speak(voice, text)
        truth.append((t, t + len(audio) / SAMPLE_RATE, voices.index(voice)))
        pieces += [audio, gap]
        t += (len(audio) + len(gap)) / SAMPLE_RATE
    return Spoken(np.concatenate(pieces).astype(np.float32), truth)


def two_speakers() -> Spoken:
    return conversation(TWO_SPEAKER_TURNS)


def one_speaker() -> Spoken:
    return conversation([(VOICE_A, text) for text in ONE_SPEAKER_TEXT])


def write_wav(spoken: Spoken, path: Path) -> Path:
    """16-bit PCM, for people who want to listen to what the test heard."""
    pcm = (np.clip(spoken.audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return path


def word_accuracy(result: DiarizedTranscript, truth: list[tuple[float, float, int]]) -> float:
    """Share of word time labelled with the true speaker, under the best
    renaming of the engine's labels onto the true speakers."""
    true_turns = [Turn(s, e, str(k)) for s, e, k in truth]
    words = [w for seg in result.segments for w in seg.words or []]
    labels = sorted({w.speaker for w in words if w.speaker})
    best = 0.0
    for names in itertools.permutations(sorted({t.speaker for t in true_turns}), len(labels)):
        rename = dict(zip(labels, names, strict=True))
        right = sum(
            w.end - w.start for w in words if rename.get(w.speaker or "") == speaker_at(w.start, w.end, true_turns)
        )
        best = max(best, right / sum(w.end - w.start for w in words))
    return best
