"""The contract between the node runtime (bus) and the work (processors,
and any installed package that provides processors): neither side imports
the other, both import this. It is the public extension point, documented
in docs/WRITING_A_PROCESSOR.md: keep what is here stable."""

from __future__ import annotations

import threading
from collections.abc import Callable
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
    anything the processor downloads; `docling_artifacts` where docling's
    weights are installed, if they are."""

    device: str
    node_id: str
    lane: Lane
    workers: int
    allow_private_urls: bool
    download_max_bytes: int
    download_timeout_s: float
    # docling's layout model weights, installed on this node (never
    # downloaded); None: documents are converted without models.
    docling_artifacts: Path | None = None


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


@dataclass(frozen=True)
class ClipCounts:
    """Short clips of different jobs an engine decoded together so far, and
    how: `mode` "batch" (one batch row each; `groups` counts the batches)
    or "pack" (several to a 30 s window; `groups` counts the windows).
    clips ÷ groups is the mean batch, or the clips per window."""

    mode: str
    clips: int
    groups: int


@dataclass(frozen=True)
class Phase:
    """One of a job's phases, in order (transcribing, then diarizing): the
    job's progress runs from index/count to (index+1)/count through it, so
    it never goes back, and `name` tells the user what the job is doing."""

    name: str
    index: int = 0
    count: int = 1

    def fraction(self, done: float, total: float) -> float | None:
        """The job's progress at `done` of `total` through this phase."""
        if total <= 0:
            return None
        return (self.index + min(1.0, done / total)) / self.count


class ProgressFn(Protocol):
    """`progress(done, total)`: how far the job is, in media seconds (or in
    pages: `progress_unit`). `phase` is for a job done in steps; a processor
    of one step leaves it out. A processor that makes text piece by piece
    passes each finished piece as `segment` (indexes 0, 1, 2, ... in order):
    the node publishes it at once, unthrottled, and clients watch the text
    grow (`/events`, the OpenAI endpoint's `stream=true`). Plain progress
    calls are throttled."""

    def __call__(
        self,
        media_s_done: float,
        media_s_total: float,
        phase: Phase | None = None,
        *,
        segment: TextSegment | None = None,
    ) -> None: ...


# What a processor's `progress(done, total)` counts, declared as its
# optional `progress_unit` attribute: media seconds (the default), or pages
# (documents, image pages). Progress events carry the counts under the
# unit's own names (`media_s_done`, or `pages_done`/`pages_total`).
SECONDS = "s"
PAGES = "page"


def progress_unit(proc: object, kind: str) -> str:
    """The unit of `proc`'s progress calls for a job of `kind`: a processor
    serving several kinds (the node's dispatcher) answers per kind."""
    per_kind = getattr(proc, "progress_unit_of", None)
    if callable(per_kind):
        return str(per_kind(kind))
    return str(getattr(proc, "progress_unit", SECONDS))


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


@runtime_checkable
class Gathers(Protocol):
    """A processor that gathers the work of several jobs into one engine
    call (short clips batched or packed, processors/clip_batcher.py). The
    node hands it, once, a count of the jobs it holds that have not reached
    the processor yet (taken, fetching or preparing their input, waiting
    for an engine slot it can have): under load a gathering waits for those
    instead of going half full; with none coming, a lone job is not held
    back."""

    def expect_from(self, coming: Callable[[], int]) -> None: ...


@runtime_checkable
class Advertises(Protocol):
    """A processor that serves features beyond its kinds, which a job's
    options may need (`TranscribeOptions.needs`): the node puts `features`
    in every heartbeat (feature name -> what serves it, e.g. engine names),
    and the gateway routes such jobs only to lanes whose nodes have them.
    Read at each heartbeat, so a feature may come and go."""

    @property
    def features(self) -> dict[str, list[str]]: ...


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
