"""The contract between the node runtime (bus) and the media work
(processors): neither imports the other, both import this."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from schemas.jobs import JobMessage, ResultSummary


@dataclass(frozen=True)
class OwnerFile:
    """An object of the job owner's bucket (`files-<owner>`) that a
    processor wants next to the job, as `work_dir / filename`, if the owner
    stored one. The node reads only the job owner's bucket, so a processor
    names the object, never the bucket; a missing object is not an error."""

    object_name: str
    filename: str


@dataclass(frozen=True)
class Staging:
    """What a job needs on disk before its processor runs. The node makes a
    private work directory only when something asks for one (a staged input,
    `work_dir`, or an owner file): a no-op or inline job costs no mkdir."""

    work_dir: bool = False
    owner_files: tuple[OwnerFile, ...] = ()

    @property
    def needs_dir(self) -> bool:
        return self.work_dir or bool(self.owner_files)


NOTHING_STAGED = Staging()


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

    `staging(job)` says what the job needs on disk besides its staged input
    (a work directory, files of the owner's bucket), so the node stays
    ignorant of media: it fetches what is asked for and nothing else.
    `work_dir` is the job's private scratch directory (mode 0700, removed
    after the job); a job with a staged input gets one, any other job only
    if `staging` asks, else None."""

    device: str
    kinds: frozenset[str]

    @property
    def models(self) -> list[str]: ...

    def staging(self, job: JobMessage) -> Staging: ...

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput: ...
