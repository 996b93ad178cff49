"""The transcript a node stores as `out/<job_id>/<attempt>.json`."""

from __future__ import annotations

from pydantic import BaseModel


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float | None = None


class Segment(BaseModel):
    """Whisper's own per-segment figures travel with the text: people filter
    hallucinations on `no_speech_prob` and `avg_logprob`, and a missing
    value must read as unknown (None), never as a confident 0.0."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    seek: int | None = None
    tokens: list[int] | None = None
    temperature: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None


class Transcript(BaseModel):
    text: str
    language: str | None = None
    language_probability: float | None = None
    duration: float
    segments: list[Segment]
    task: str = "transcribe"
    model: str | None = None
    device: str | None = None
    node_id: str | None = None
    processing_s: float | None = None
    real_time_factor: float | None = None
    source_url: str | None = None  # URL jobs: what was downloaded
    title: str | None = None  # URL jobs: the page's title, as yt-dlp found it
