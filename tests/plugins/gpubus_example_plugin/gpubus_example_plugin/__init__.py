"""The `wordcount` kind: words, lines and the most frequent words of a text.

A gpubus processor package needs only this module and the entry point in
its pyproject.toml; nothing in gpubus changes for its kind. It takes a
staged file (an upload, or a JSON job's inline `text`, which the gateway
stages as a file), suits the CPU lane only, and loads no model.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from schemas.errors import JobCancelled, JobFailed
from schemas.jobs import JobMessage, ResultSummary
from schemas.names import Lane
from schemas.processing import NOTHING_STAGED, Input, JobOutput, ProcessorContext, ProgressFn, Staging

KIND = "wordcount"
MAX_BYTES = 16 * 1024 * 1024  # a word count of more is not what this kind is for
TOP = 10
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


class WordFrequency(BaseModel):
    word: str
    count: int


class WordCount(BaseModel):
    """The result, stored as JSON and served by `GET .../result`."""

    job_id: str
    node_id: str
    words: int
    lines: int
    characters: int
    top: list[WordFrequency]


def count(text: str) -> tuple[int, int, list[WordFrequency]]:
    """(words, lines, the most frequent words, case-folded)."""
    found = [w.casefold() for w in WORD.findall(text)]
    top = [WordFrequency(word=w, count=n) for w, n in Counter(found).most_common(TOP)]
    return len(found), len(text.splitlines()), top


class WordCountProcessor:
    kinds = frozenset({KIND})
    lanes = frozenset({Lane.CPU})
    inputs = frozenset({Input.FILE})
    models: list[str] = []

    def __init__(self, ctx: ProcessorContext) -> None:
        self.device = ctx.device
        self.node_id = ctx.node_id

    def staging(self, job: JobMessage) -> Staging:
        return NOTHING_STAGED  # the staged input is all it reads

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        t0 = time.monotonic()
        if input_path is None:
            raise JobFailed("INPUT_MISSING", "a wordcount job needs a text file")
        if input_path.stat().st_size > MAX_BYTES:
            raise JobFailed("INPUT_TOO_LARGE", f"over {MAX_BYTES} bytes")
        try:
            text = input_path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise JobFailed("DECODE_FAILED", f"not UTF-8 text: {e}") from None
        if cancelled.is_set():
            raise JobCancelled()
        progress(0.0, 0.0)  # proof of life; a long job would call it as it goes
        words, lines, top = count(text)
        result = WordCount(
            job_id=job.job_id, node_id=self.node_id, words=words, lines=lines, characters=len(text), top=top
        )
        summary = ResultSummary(processing_s=round(time.monotonic() - t0, 6), device=self.device)
        return JobOutput(result=result, summary=summary)


def make_processor(ctx: ProcessorContext) -> WordCountProcessor:
    """The entry point: called once per node start with the node's context."""
    return WordCountProcessor(ctx)
