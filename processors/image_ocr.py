"""Images to text: PNG, JPEG, WebP, TIFF and BMP through PP-OCR.

rapidocr-onnxruntime runs PaddleOCR's PP-OCR detection, direction and
recognition models on onnxruntime, and ships those models inside its wheel,
so a node OCRs with nothing downloaded. It runs on CPU unless onnxruntime
reports its CUDA execution provider (the onnxruntime-gpu build on a GPU node).

Images are opened header-first: the pixel count is checked against the cap
before a single pixel is decoded, which is what refuses a 30,000 x 30,000
"decompression bomb" that is a few bytes on disk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.document_errors import DecodeFailed, DocumentTooLarge, ImageTooLarge
from schemas.documents import OcrLine, OcrPage, OcrResult
from schemas.errors import JobCancelled

log = logging.getLogger("gpubus.processors.ocr")

FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")  # the only decoders Pillow may pick
DEFAULT_MAX_PIXELS = 100_000_000  # 10,000 x 10,000: a 600 dpi A3 page is ~70 M
ENGINE = "rapidocr-onnxruntime"
CUDA_PROVIDER = "CUDAExecutionProvider"

# Pillow's own guard, set explicitly (its default is 89 M, with a mere warning
# up to twice that): open() raises DecompressionBombError past twice this.
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS  # per page
    max_pages: int = 100  # frames of a multi-page TIFF


def choose_device(prefer_cuda: bool = True) -> str:
    """'cuda' only when onnxruntime itself can run CUDA here."""
    import onnxruntime

    return "cuda" if prefer_cuda and CUDA_PROVIDER in onnxruntime.get_available_providers() else "cpu"


def _open(path: Path) -> Any:
    try:
        return Image.open(path, formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"the image declares too many pixels ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DecodeFailed("not a PNG, JPEG, WebP, TIFF or BMP image Pillow can read") from e


def page_count(image: Any) -> int:
    """Pages of an opened image: a TIFF's frames, else one (an animated WebP is one image)."""
    return int(getattr(image, "n_frames", 1)) if image.format == "TIFF" else 1


def _frames(image: Any, limits: ImageLimits) -> Iterator[Image.Image]:
    """Each page as RGB, upright; its size checked before it is decoded."""
    count = page_count(image)
    if count > limits.max_pages:
        raise DocumentTooLarge(f"the image has {count} pages; the limit is {limits.max_pages}")
    for index in range(count):
        image.seek(index)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageTooLarge(f"page {index + 1} is {width} x {height} pixels; the limit is {limits.max_pixels:,}")
        try:
            yield ImageOps.exif_transpose(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DecodeFailed(f"page {index + 1} of the image could not be decoded ({e})") from e


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Top to bottom, and left to right within a row: a box whose vertical
    middle falls inside the current row's span joins that row."""
    rows: list[list[OcrLine]] = []
    for line in sorted(lines, key=lambda ln: min(p[1] for p in ln.box)):
        top, bottom = min(p[1] for p in line.box), max(p[1] for p in line.box)
        if rows:
            row_top = min(p[1] for p in rows[-1][0].box)
            row_bottom = max(p[1] for p in rows[-1][0].box)
            if row_top <= (top + bottom) / 2 <= row_bottom:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: min(p[0] for p in ln.box))]


class OcrEngine:
    """Loaded once per process (three ONNX sessions), shared by the node's workers."""

    def __init__(self, *, prefer_cuda: bool = True) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.device = choose_device(prefer_cuda)
        cuda = self.device == "cuda"
        t0 = time.monotonic()
        self._ocr = RapidOCR(det_use_cuda=cuda, cls_use_cuda=cuda, rec_use_cuda=cuda)
        log.info("loaded %s on %s in %.2fs", ENGINE, self.device, time.monotonic() - t0)

    def _page(self, number: int, frame: Image.Image) -> OcrPage:
        found, _elapsed = self._ocr(frame)
        lines = [
            OcrLine(text=text, confidence=round(float(score), 4), box=tuple((float(x), float(y)) for x, y in box))
            for box, text, score in (found or [])
            if str(text).strip()
        ]
        return OcrPage(number=number, width=frame.width, height=frame.height, lines=reading_order(lines))

    def recognize(
        self,
        path: Path,
        limits: ImageLimits,
        cancelled: threading.Event | None = None,
        on_page: Callable[[int, int], None] | None = None,
    ) -> OcrResult:
        """Raises ImageTooLarge, DocumentTooLarge, DecodeFailed, JobCancelled.
        `on_page(done, total)` after each page."""
        t0 = time.monotonic()
        pages: list[OcrPage] = []
        with _open(path) as image:
            count = page_count(image)
            for number, frame in enumerate(_frames(image, limits), start=1):
                if cancelled is not None and cancelled.is_set():
                    raise JobCancelled()
                pages.append(self._page(number, frame))
                if on_page is not None:
                    on_page(number, count)
        text = "\n\n".join("\n".join(ln.text for ln in p.lines) for p in pages).strip()
        elapsed = round(time.monotonic() - t0, 3)
        log.info(
            "ocr of %s: %d pages, %d lines in %.2fs", path.name, len(pages), sum(len(p.lines) for p in pages), elapsed
        )
        return OcrResult(pages=pages, text=text, engine=ENGINE, device=self.device, processing_s=elapsed)
