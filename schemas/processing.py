"""The contract between the node runtime (bus) and the work (processors,
and any installed package that provides processors): neither side imports
the other, both import this. It is the public extension point, documented
in docs/WRITING_A_PROCESSOR.md: keep what is here stable."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from schemas.events import TextSegment
from schemas.jobs import JobMessage, ResultSummary
from schemas.names import Lane

# The importlib.metadata entry-point group a package registers its
# processor factories in: `name = "module:factory"`, the factory taking a
# `ProcessorContext` and returning a `Processor`.
ENTRY_POINT_GROUP = "gpubus.processors"


class Input(StrEnum):
    """What a processor reads: a file the gateway staged (an upload, or a
    JSON job's inline `text`), the job's `url`, or nothing."""

    FILE = "file"
    URL = "url"
    NONE = "none"


def input_of(job: JobMessage) -> Input:
    """The input a job carries (a job has at most one of a file and a URL)."""
    if job.input is not None:
        return Input.FILE
    return Input.URL if job.url else Input.NONE


@dataclass(frozen=True)
class ProcessorContext:
    """What a processor factory is given: the node it will run on, and the
    few settings values a processor may need. Plain values, never the
    node's settings object, so a plugin depends on this and nothing else.

    `device` is "cpu" or "cuda"; `lane` the lane the node pulls (a factory
    may look at it, but the node itself drops processors whose `lanes`
    leave it out); `workers` the jobs the node runs at once;
    `allow_private_urls` whether URLs to private addresses may be fetched
    (tests); `download_max_bytes` and `download_timeout_s` the caps on
    anything the processor downloads."""

    device: str
    node_id: str
    lane: Lane
    workers: int
    allow_private_urls: bool
    download_max_bytes: int
    download_timeout_s: float


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
    """`progress(done, total)`: how far the job is, in media seconds. A
    processor that makes text piece by piece passes each finished piece as
    `segment` (indexes 0, 1, 2, ... in order): the node publishes it at
    once, unthrottled, and clients watch the text grow (`/events`, the
    OpenAI endpoint's `stream=true`). Plain progress calls are throttled."""

    def __call__(self, media_s_done: float, media_s_total: float, *, segment: TextSegment | None = None) -> None: ...


@dataclass(frozen=True)
class JobOutput:
    result: BaseModel  # stored as JSON in the owner's bucket
    summary: ResultSummary


@runtime_checkable
class Prepares(Protocol):
    """A processor whose CPU-side preparation of an input (decoding,
    resampling) can run before the job holds an engine slot, while the
    engine still works on the job before: the node calls `prepare` in a
    worker thread once the input is on disk, and `run` then finds what it
    left in `work_dir` (removed with the job). A node that prefetches
    (`GPUBUS_NODE_PREFETCH`) keeps a fast engine busy that way; without
    `prepare`, `run` does everything, as before."""

    def prepare(self, job: JobMessage, input_path: Path, work_dir: Path) -> None: ...


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
    if `staging` asks, else None.

    `kinds` are the job kinds it runs (each matching `names.KIND_PATTERN`),
    `lanes` the lanes it suits (a node of another lane does not load it,
    so routing never sends it a job of that lane), `inputs` what its jobs
    may carry (a job with another input fails with `INPUT_NOT_ACCEPTED`
    before `run`)."""

    device: str
    kinds: frozenset[str]
    lanes: frozenset[Lane]
    inputs: frozenset[Input]

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
