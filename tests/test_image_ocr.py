"""OCR on images drawn here with Pillow: the known words come back with
boxes and confidences, in reading order; pixel bombs and broken files are
refused with their own codes, before any decoding."""

from __future__ import annotations

import re
import time

import pytest
from PIL import Image

from processors import image_ocr
from processors.image_ocr import ImageLimits, OcrEngine, reading_order
from schemas.document_errors import DOCUMENT_TOO_LARGE, IMAGE_TOO_LARGE, DocumentFailed
from schemas.documents import OcrLine
from schemas.errors import DECODE_FAILED
from tests import document_files as files

pytestmark = pytest.mark.timeout(120)
LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_recall(expected: list[str], text: str) -> float:
    want, got = _words(" ".join(expected)), set(_words(text))
    return sum(w in got for w in want) / len(want)


def test_png_gives_the_known_lines_with_boxes_in_reading_order(engine, tmp_path):
    # Given a PNG with three lines of known text
    png = files.text_png(tmp_path / "scan.png")
    # When it is OCRed
    result = engine.recognize(png, LIMITS)
    # Then >= 90% of the words come back, line by line, top to bottom
    recall = word_recall(files.OCR_LINES, result.text)
    print(f"OCR word recall: {recall:.0%}")
    assert recall >= 0.9
    assert result.engine == image_ocr.ENGINE and result.device == "cpu"
    (page,) = result.pages
    assert (page.width, page.height) == (900, 315)
    assert len(page.lines) == 3
    for line, expected in zip(page.lines, files.OCR_LINES, strict=True):
        assert word_recall([expected], line.text) >= 0.75
        assert 0 < line.confidence <= 1
        assert all(0 <= x <= page.width and 0 <= y <= page.height for x, y in line.box)


def test_multipage_tiff_gives_pages(engine, tmp_path):
    tiff = files.multipage_tiff(tmp_path / "two.tiff", [["Page one has apples"], ["Page two has pears"]])
    result = engine.recognize(tiff, LIMITS)
    assert [p.number for p in result.pages] == [1, 2]
    assert "apples" in result.pages[0].lines[0].text.lower()
    assert "pears" in result.pages[1].lines[0].text.lower()
    with pytest.raises(DocumentFailed) as caught:
        engine.recognize(tiff, ImageLimits(max_pages=1))
    assert caught.value.code == DOCUMENT_TOO_LARGE


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, we refuse
def test_pixel_bomb_is_refused_in_seconds(engine, tmp_path):
    # Given a PNG of a few hundred bytes that declares 30,000 x 30,000 pixels
    bomb = files.pixel_bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1024
    t0 = time.monotonic()
    with pytest.raises(DocumentFailed) as caught:
        engine.recognize(bomb, LIMITS)
    assert caught.value.code == IMAGE_TOO_LARGE and time.monotonic() - t0 < 2
    # and our own cap, below Pillow's, refuses what Pillow would only warn about
    with pytest.raises(DocumentFailed) as caught:
        engine.recognize(files.pixel_bomb_png(tmp_path / "mid.png", width=12_000, height=10_000), LIMITS)
    assert caught.value.code == IMAGE_TOO_LARGE


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp", ".tiff"])
def test_each_format_opens_as_rgb_pages(tmp_path, suffix):
    source = Image.open(files.text_png(tmp_path / "scan.png")).convert("L")  # greyscale: converted to RGB
    source.save(tmp_path / f"scan{suffix}")
    with image_ocr._open(tmp_path / f"scan{suffix}") as image:
        (page,) = list(image_ocr._frames(image, LIMITS))
    assert page.mode == "RGB" and page.size == source.size


def test_broken_and_foreign_files_fail_to_decode(engine, tmp_path):
    png = files.text_png(tmp_path / "scan.png")
    cut = files.truncated(tmp_path / "cut.png", png)
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (10, 10), "white").save(gif)  # a real image, in a format not on the list
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (cut, gif, text):
        with pytest.raises(DocumentFailed) as caught:
            engine.recognize(path, LIMITS)
        assert caught.value.code == DECODE_FAILED, path.name


def test_reading_order_rows_then_left_to_right():
    def line(text: str, x: float, y: float) -> OcrLine:
        return OcrLine(text=text, confidence=1.0, box=((x, y), (x + 50, y), (x + 50, y + 20), (x, y + 20)))

    shuffled = [line("d", 0, 100), line("b", 200, 2), line("a", 0, 0), line("c", 400, 5)]
    assert [ln.text for ln in reading_order(shuffled)] == ["a", "b", "c", "d"]


def test_cuda_is_chosen_only_when_onnxruntime_has_it(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert image_ocr.choose_device() == "cpu"
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert image_ocr.choose_device() == "cuda" and image_ocr.choose_device(prefer_cuda=False) == "cpu"


def test_a_phone_photo_is_turned_upright_from_its_exif_orientation(tmp_path):
    # Given a 200 x 100 JPEG whose EXIF says "rotate 90°" (how phones store portrait shots)
    photo = Image.new("RGB", (200, 100), "white")
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    photo.save(tmp_path / "phone.jpg", exif=exif)
    # Then OCR sees it upright
    with image_ocr._open(tmp_path / "phone.jpg") as image:
        (page,) = list(image_ocr._frames(image, LIMITS))
    assert page.size == (100, 200)
