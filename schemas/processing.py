"""The contract between the node runtime (bus) and the media work
(processors): neither imports the other, both import this."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from schemas.jobs import JobMessage, ResultSummary


COOKIES_FILENAME = "cookies.txt"


def cookies_path(work_dir: Path) -> Path:
    """Where the node runtime puts the owner's cookie file for a URL job, if
    the owner uploaded one; the URL processor hands it to yt-dlp from there."""
    return work_dir / COOKIES_FILENAME


class ProgressFn(Protocol):
    def __call__(self, media_s_done: float, media_s_total: float) -> None: ...


@dataclass(frozen=True)
class JobOutput:
    result: BaseModel  # stored as JSON in the owner's bucket
    summary: ResultSummary


class Processor(Protocol):
    """Runs one job in a worker thread. Raises `JobFailed` for bad input,
    `JobRetryable` for transient trouble, `JobCancelled` when `cancelled`
    was set. Calls `progress` as it goes: that is also the node's proof of
    life, so a job that stops calling it past the deadline falls back.

    `work_dir` is the job's private scratch directory (removed after the
    job); a job with nothing to fetch (no staged input, not a URL) gets
    None, so a no-op or inline job costs no directory on disk."""

    device: str
    kinds: frozenset[str]

    @property
    def models(self) -> list[str]: ...

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput: ...
