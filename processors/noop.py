"""The `noop` kind: returns at once, so benchmarks measure the bus alone;
or, with `seconds` (GPUBUS_NOOP_SECONDS), holds each job that long, so
tests can watch the order a busy node takes jobs in."""

from __future__ import annotations

import threading
from pathlib import Path

from pydantic import BaseModel

from schemas.jobs import JobMessage, ResultSummary
from schemas.names import Kind, Lane
from schemas.processing import NOTHING_STAGED, Input, JobOutput, ProgressFn, Staging


class NoopResult(BaseModel):
    job_id: str
    echo: str | None = None


class NoopProcessor:
    kinds = frozenset({Kind.NOOP.value})
    lanes = frozenset(Lane)
    inputs = frozenset({Input.NONE, Input.URL})  # a URL is echoed, never fetched
    models: list[str] = []

    def __init__(self, device: str = "cpu", *, seconds: float = 0.0) -> None:
        self.device = device
        self.seconds = seconds

    def staging(self, job: JobMessage) -> Staging:
        return NOTHING_STAGED

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        if self.seconds:
            cancelled.wait(self.seconds)  # a cancel ends the wait (the runtime then reports it)
        return JobOutput(result=NoopResult(job_id=job.job_id, echo=job.url), summary=ResultSummary())
