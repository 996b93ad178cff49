"""The transcript a node stores as `out/<job_id>/<attempt>.json`."""

from __future__ import annotations

from pydantic import BaseModel


class Word(BaseModel):
    start: float
    end: float
    word: str
    probability: float | None = None


class Segment(BaseModel):
    id: int
    start: float
    end: float
    text: str
    words: list[Word] | None = None


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
