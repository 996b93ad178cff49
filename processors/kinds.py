"""The `document`, `web` and `image` kinds: the engines behind the node's interface.

Each engine is a pure function of a file (or a URL) and explicit limits
(processors/documents.py, web_page.py, image_ocr.py); these classes are what
a node runs: they declare kinds, lanes and inputs, report progress in pages
(schemas/processing.PAGES) and proof of life, stop at a cancel between pages,
and sum a result up for the job record and the metrics.

Lanes follow the seeds' rule: OCR may run on a GPU node (onnxruntime's CUDA
provider where it is installed, else that box's CPU); a web page never
needs one; a document does only where docling's layout models are installed
on the node, so a GPU node without them does not advertise documents and
routing sends them to CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from http.cookiejar import LoadError, MozillaCookieJar
from pathlib import Path

from processors import documents, image_ocr, url_media
from processors.web_fetch import WebFetchLimits
from processors.web_page import read_web_page
from schemas.errors import INPUT_MISSING, JobCancelled, JobFailed
from schemas.jobs import JobMessage, ResultSummary
from schemas.names import Kind, Lane
from schemas.processing import NOTHING_STAGED, PAGES, Input, JobOutput, ProcessorContext, ProgressFn, Staging
from schemas.url_guard import UrlRefused, check_syntax

log = logging.getLogger("gpubus.processors.kinds")

CPU_ONLY = frozenset({Lane.CPU})


def _pages_progress(progress: ProgressFn, cancelled: threading.Event) -> documents.OnPage:
    """The engines' per-page callback: progress in pages, and a cancel
    honoured between pages rather than after the whole file."""

    def on_page(done: int, total: int) -> None:
        if cancelled.is_set():
            raise JobCancelled()
        progress(float(done), float(total))

    return on_page


def _staged(job: JobMessage, input_path: Path | None) -> Path:
    if input_path is None or job.input is None:
        raise JobFailed(INPUT_MISSING, f"a {job.kind} job needs a staged file")
    return input_path


class DocumentProcessor:
    kinds = frozenset({Kind.DOCUMENT.value})
    inputs = frozenset({Input.FILE})
    progress_unit = PAGES

    def __init__(self, ctx: ProcessorContext) -> None:
        self.limits = documents.DocumentLimits(docling_artifacts=ctx.docling_artifacts)
        self.docling = documents.docling_usable(self.limits.docling_artifacts)
        # A GPU node serves documents only with a layout engine that uses it.
        self.lanes = frozenset(Lane) if self.docling else CPU_ONLY
        self.device = ctx.device if self.docling else "cpu"

    @property
    def models(self) -> list[str]:
        return []

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
        path = _staged(job, input_path)
        on_page = _pages_progress(progress, cancelled)
        result = documents.convert(
            path, self.limits, filename=job.input.filename if job.input else None, on_page=on_page
        )
        pages = len(result.pages) or 1  # an unpaginated document (DOCX, HTML) counts as one page
        if result.engine != documents.ENGINE_PDF:  # that one reports each page as it goes
            on_page(pages, pages)
        return JobOutput(
            result=result,
            summary=ResultSummary(
                processing_s=result.processing_s or 0.0, device=self.device, model=result.engine, pages=pages
            ),
        )


class ImageProcessor:
    kinds = frozenset({Kind.IMAGE.value})
    lanes = frozenset(Lane)
    inputs = frozenset({Input.FILE})
    progress_unit = PAGES

    def __init__(self, ctx: ProcessorContext) -> None:
        self.limits = image_ocr.ImageLimits()
        self._prefer_cuda = ctx.device == "cuda"
        self.device = image_ocr.choose_device(self._prefer_cuda)
        self._engine: image_ocr.OcrEngine | None = None
        self._lock = threading.Lock()

    @property
    def models(self) -> list[str]:
        return []

    def engine(self) -> image_ocr.OcrEngine:
        """Loaded at the first image job, not at node start: three ONNX
        sessions that a node serving only speech never needs."""
        with self._lock:
            if self._engine is None:
                self._engine = image_ocr.OcrEngine(prefer_cuda=self._prefer_cuda)
            return self._engine

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
        path = _staged(job, input_path)
        result = self.engine().recognize(path, self.limits, cancelled, on_page=_pages_progress(progress, cancelled))
        return JobOutput(
            result=result,
            summary=ResultSummary(
                processing_s=result.processing_s or 0.0,
                device=result.device,
                model=result.engine,
                pages=len(result.pages),
            ),
        )


class WebProcessor:
    kinds = frozenset({Kind.WEB.value})
    lanes = CPU_ONLY
    inputs = frozenset({Input.URL})
    progress_unit = PAGES

    def __init__(self, ctx: ProcessorContext) -> None:
        self.device = "cpu"
        self.limits = WebFetchLimits(
            timeout_s=min(WebFetchLimits.timeout_s, ctx.download_timeout_s), allow_private=ctx.allow_private_urls
        )

    @property
    def models(self) -> list[str]:
        return []

    def staging(self, job: JobMessage) -> Staging:
        """A private dir with the owner's cookie file, if they stored one:
        the same file and mechanism as media URLs (processors/url_media.py)."""
        return url_media.STAGING

    def run(
        self,
        job: JobMessage,
        input_path: Path | None,
        work_dir: Path | None,
        progress: ProgressFn,
        cancelled: threading.Event,
    ) -> JobOutput:
        if not job.url:
            raise JobFailed(INPUT_MISSING, "a web job needs a url")
        try:
            url = check_syntax(job.url)  # the gateway checked it too; a node trusts no message
        except UrlRefused as e:
            raise JobFailed(e.code, e.message) from None
        t0 = time.monotonic()
        result = read_web_page(url, self.limits, _cookies(work_dir))
        if cancelled.is_set():
            raise JobCancelled()
        progress(1.0, 1.0)
        elapsed = time.monotonic() - t0
        return JobOutput(
            result=result,
            summary=ResultSummary(processing_s=elapsed, language=result.language, device="cpu", model=result.engine),
        )


def _cookies(work_dir: Path | None) -> MozillaCookieJar | None:
    """The owner's Netscape cookie file, staged next to the job; checked
    at upload (schemas/cookies.py), so one that does not load is logged
    (never its contents) and the page fetched without it."""
    path = work_dir / url_media.COOKIES_FILENAME if work_dir is not None else None
    if path is None or not path.is_file():
        return None
    jar = MozillaCookieJar()
    try:
        # Browser exports write session cookies with expiry 0, which the jar
        # takes for "expired in 1970": load them all, then drop the expired.
        jar.load(str(path), ignore_discard=True, ignore_expires=True)
    except (LoadError, OSError) as e:
        log.warning("the owner's cookie file did not load (%s); fetching without cookies", type(e).__name__)
        return None
    now = int(time.time())
    for cookie in list(jar):
        if cookie.expires == 0:
            cookie.expires = None
        elif cookie.is_expired(now):
            jar.clear(cookie.domain, cookie.path, cookie.name)
    return jar


def build(ctx: ProcessorContext) -> list[DocumentProcessor | ImageProcessor | WebProcessor]:
    """The three kinds' processors for a node (the node keeps those that suit its lane)."""
    return [DocumentProcessor(ctx), ImageProcessor(ctx), WebProcessor(ctx)]
