"""One processor per kind, behind the single `Processor` a node runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from schemas.errors import JobFailed
from schemas.jobs import JobMessage
from schemas.names import Lane
from schemas.processing import (
    NOTHING_STAGED,
    SECONDS,
    Advertises,
    ClipCounts,
    Input,
    JobOutput,
    Prepares,
    Processor,
    ProgressFn,
    Staging,
    input_of,
    progress_unit,
)

UNSUPPORTED_KIND = "UNSUPPORTED_KIND"
INPUT_NOT_ACCEPTED = "INPUT_NOT_ACCEPTED"


class ByKind:
    def __init__(
        self,
        processors: list[Processor],
        *,
        device: str,
        load_seconds: float | None = None,
        clip_counts: Callable[[], ClipCounts | None] | None = None,
        expect_from: Callable[[Callable[[], int]], None] | None = None,
    ) -> None:
        self.device = device
        self.load_seconds = load_seconds
        self.clip_counts = clip_counts  # the node's clip metrics read it (bus/node_host.py)
        self._expect_from = expect_from
        self._by_kind: dict[str, Processor] = {k: p for p in processors for k in p.kinds}
        self.kinds = frozenset(self._by_kind)
        self.lanes: frozenset[Lane] = frozenset(lane for p in processors for lane in p.lanes)
        self.inputs: frozenset[Input] = frozenset(i for p in processors for i in p.inputs)
        self._processors = processors

    @property
    def models(self) -> list[str]:
        return sorted({m for p in self._processors for m in p.models})

    @property
    def features(self) -> dict[str, list[str]]:
        """Every processor's features, their offers merged (schemas/processing.Advertises)."""
        merged: dict[str, set[str]] = {}
        for p in self._processors:
            if isinstance(p, Advertises):
                for feature, offers in p.features.items():
                    merged.setdefault(feature, set()).update(offers)
        return {feature: sorted(offers) for feature, offers in merged.items()}

    def expect_from(self, coming: Callable[[], int]) -> None:
        """To the engine that gathers clips, if any (schemas/processing.Gathers)."""
        if self._expect_from is not None:
            self._expect_from(coming)

    def progress_unit_of(self, kind: str) -> str:
        """What the kind's progress calls count (schemas/processing.progress_unit)."""
        proc = self._by_kind.get(kind)
        return progress_unit(proc, kind) if proc is not None else SECONDS

    def staging(self, job: JobMessage) -> Staging:
        """The kind's own needs; an unsupported kind needs nothing (run fails it)."""
        proc = self._by_kind.get(job.kind)
        return proc.staging(job) if proc is not None else NOTHING_STAGED

    def prepare(self, job: JobMessage, input_path: Path, work_dir: Path) -> None:
        """The kind's own `prepare`, if it has one (schemas/processing.Prepares)."""
        proc = self._by_kind.get(job.kind)
        if isinstance(proc, Prepares):
            proc.prepare(job, input_path, work_dir)

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        proc = self._by_kind.get(job.kind)
        if proc is None:
            raise JobFailed(UNSUPPORTED_KIND, f"this node does not process {job.kind} jobs")
        given = input_of(job)
        if given not in proc.inputs:
            takes = ", ".join(sorted(proc.inputs))
            raise JobFailed(INPUT_NOT_ACCEPTED, f"a {job.kind} job takes {takes}, not {given}")
        return proc.run(job, input_path, work_dir, progress, cancelled)
