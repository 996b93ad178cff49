"""The document engine on files made here: structure, text, and the
refusals (locked, broken, zip bomb), each with its own code, in seconds."""

from __future__ import annotations

import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from processors import documents
from processors.documents import DocumentLimits, convert
from processors.zip_guard import ZipLimits
from schemas.document_errors import (
    ARCHIVE_TOO_LARGE,
    DOCUMENT_ENCRYPTED,
    DOCUMENT_TOO_LARGE,
    UNSUPPORTED_DOCUMENT,
    DocumentFailed,
)
from schemas.document_formats import render
from schemas.documents import DocumentResult, OcrLine, OcrPage, OcrResult, WebPageResult
from schemas.errors import DECODE_FAILED, InvalidInput
from tests import document_files as files

pytestmark = pytest.mark.timeout(60)
LIMITS = DocumentLimits()


def _failure(path: Path, limits: DocumentLimits = LIMITS) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(DocumentFailed) as caught:
        convert(path, limits)
    return caught.value.code, time.monotonic() - t0


def test_pdf_gives_pages_title_and_the_table(tmp_path):
    # Given a 3-page PDF with known words per page and a ruled table on page 2
    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    # When it is converted
    result = convert(pdf, LIMITS)
    # Then each page carries its own words, and the table comes back as Markdown
    assert result.engine == documents.ENGINE_PDF and result.source_format == "pdf"
    assert result.title == "Quarterly Report"
    assert [p.number for p in result.pages] == [1, 2, 3]
    for page, words in zip(result.pages, files.PDF_PAGE_WORDS, strict=True):
        assert all(w in page.text for w in words)
    assert len(result.tables) == 1
    assert result.tables[0].splitlines()[0] == "| Fruit | Count |"
    assert "| Mango | 12 |" in result.tables[0] and result.tables[0] in result.markdown
    assert result.markdown.startswith("# Quarterly Report")
    assert all(w in result.text for words in files.PDF_PAGE_WORDS for w in words)


def test_docx_gives_headings_and_the_table(tmp_path):
    result = convert(files.docx_with_headings(tmp_path / "guide.docx"), LIMITS)
    assert result.engine == documents.ENGINE_MARKITDOWN and result.source_format == "docx"
    assert [(h.level, h.text) for h in result.headings] == [(1, "Field Guide"), (2, "Habitat")]
    assert result.title == "Field Guide"
    assert len(result.tables) == 1 and "| Mango | 12 |" in result.tables[0]
    assert "Owls hunt at night" in result.text and "#" not in result.text and "Mango\t12" in result.text


def test_html_markdown_and_text_files(tmp_path):
    html = tmp_path / "page.html"
    html.write_text(
        "<html><head><title>Tide Tables</title></head><body><h1>Tides</h1><p>The moon pulls the sea.</p>"
        "<h2>Spring tides</h2><table><tr><th>Port</th><th>Height</th></tr><tr><td>Brest</td><td>7m</td></tr></table>"
        "</body></html>"
    )
    result = convert(html, LIMITS)
    assert result.title == "Tide Tables" and [h.text for h in result.headings] == ["Tides", "Spring tides"]
    assert "| Brest | 7m |" in result.tables[0]
    md = tmp_path / "notes.md"
    md.write_text("# Notes\n\nSome **bold** words.\n\n```\n# not a heading\n```\n")
    notes = convert(md, LIMITS)
    assert [h.text for h in notes.headings] == ["Notes"] and "Some bold words." in notes.text
    txt = tmp_path / "plain.txt"
    txt.write_text("just plain words\n")
    assert convert(txt, LIMITS).text == "just plain words"


def test_pptx_slides_are_pages_and_xlsx_sheets_tables(tmp_path):
    deck = convert(files.pptx_two_slides(tmp_path / "deck.pptx"), LIMITS)
    assert [p.number for p in deck.pages] == [1, 2]
    assert "rockets ready" in deck.pages[0].text and "seventy thousand" in deck.pages[1].text
    sheet = convert(files.xlsx_sheet(tmp_path / "stock.xlsx"), LIMITS)
    assert any("Inventory" == h.text for h in sheet.headings)
    assert len(sheet.tables) == 1 and "Mango" in sheet.tables[0]


def test_epub_chapters(tmp_path):
    book = convert(files.epub_book(tmp_path / "sea.epub"), LIMITS)
    assert book.source_format == "epub" and book.title == "Sea Stories"
    assert any(h.text == "The Lighthouse" for h in book.headings) and "trimmed the wicks" in book.text


def test_encrypted_and_truncated_pdfs_fail_with_their_own_codes(tmp_path):
    good = files.pdf_3_pages(tmp_path / "good.pdf")
    code, took = _failure(files.encrypted_pdf(tmp_path / "locked.pdf", good))
    assert code == DOCUMENT_ENCRYPTED and took < 5
    code, took = _failure(files.truncated(tmp_path / "cut.pdf", good))
    assert code == DECODE_FAILED and took < 5


def test_docx_zip_bomb_is_refused_before_any_library_opens_it(tmp_path):
    # Given a DOCX with an entry of 300 MiB of zeros (a few hundred KiB on disk)
    good = files.docx_with_headings(tmp_path / "good.docx")
    bomb = files.zip_bomb_docx(tmp_path / "bomb.docx", good, expanded_bytes=300 * 1024 * 1024)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    # When it is converted with the default cap (256 MiB), Then the declared size refuses it at once
    code, took = _failure(bomb)
    assert code == ARCHIVE_TOO_LARGE and took < 2


def test_zip_bomb_that_understates_its_size_is_still_refused(tmp_path):
    # Given a bomb whose headers claim the 64 MiB entry is 1 KiB
    good = files.docx_with_headings(tmp_path / "good.docx")
    bomb = files.zip_bomb_docx(tmp_path / "bomb.docx", good, expanded_bytes=64 * 1024 * 1024)
    files.understate_sizes(bomb, "word/media/zeros.bin", 1024)
    # When it is converted: Then inflating stops at the declared size, where the CRC no longer matches
    small = DocumentLimits(zip=ZipLimits(max_expanded_bytes=8 * 1024 * 1024))
    code, took = _failure(bomb, small)
    assert code == DECODE_FAILED and took < 5
    # and a cap below the honest size refuses by the real count too
    honest = files.zip_bomb_docx(tmp_path / "honest.docx", good, expanded_bytes=16 * 1024 * 1024)
    tracemalloc.start()
    try:
        assert _failure(honest, small)[0] == ARCHIVE_TOO_LARGE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # counted chunk by chunk, never held


def test_a_zip_nested_in_a_docx_is_never_unpacked(tmp_path):
    # Given a DOCX with an embedded zip that would inflate to 100 MiB
    good = files.docx_with_headings(tmp_path / "good.docx")
    nested = files.docx_with_nested_zip(tmp_path / "nested.docx", good, inner_bytes=100 * 1024 * 1024)
    # When it is converted: Then only the DOCX converter runs; the document converts, the inner zip stays shut
    t0 = time.monotonic()
    result = convert(nested, LIMITS)
    assert "Owls hunt at night" in result.text and "zeros.bin" not in result.markdown
    assert time.monotonic() - t0 < 5
    # and when the DOCX converter fails on it, no other converter (markitdown's zip converter) takes over
    broken = files.docx_with_nested_zip(tmp_path / "b.docx", good, inner_bytes=100 * 1024 * 1024, broken=True)
    code, took = _failure(broken)
    assert code == DECODE_FAILED and took < 5


def test_a_zip_that_is_no_docx_fails_to_decode(tmp_path):
    # Given a well-formed zip with none of a DOCX's parts, and a DOCX cut in half
    odd = tmp_path / "odd.docx"
    with zipfile.ZipFile(odd, "w") as zf:
        zf.writestr("hello.txt", "hi")
    cut = files.truncated(tmp_path / "cut.docx", files.docx_with_headings(tmp_path / "good.docx"))
    # Then both fail with DECODE_FAILED, from the converter and from the zip check
    assert _failure(odd)[0] == DECODE_FAILED
    assert _failure(cut)[0] == DECODE_FAILED


def test_too_many_pages_mismatched_and_unknown_files(tmp_path):
    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    assert _failure(pdf, DocumentLimits(max_pages=2))[0] == DOCUMENT_TOO_LARGE
    fake = tmp_path / "fake.pdf"
    fake.write_text("hello")
    assert _failure(fake)[0] == DECODE_FAILED
    fake_docx = tmp_path / "fake.docx"
    fake_docx.write_text("hello")
    assert _failure(fake_docx)[0] == DECODE_FAILED
    odd = tmp_path / "data.bin"
    odd.write_bytes(b"\x00\x01")
    assert _failure(odd)[0] == UNSUPPORTED_DOCUMENT


def test_docling_is_used_only_where_installed(tmp_path):
    # This machine has no docling: even with a weights folder, the model-free engine runs and says so
    weights = tmp_path / "docling-models"
    weights.mkdir()
    result = convert(files.pdf_3_pages(tmp_path / "r.pdf"), DocumentLimits(docling_artifacts=weights))
    assert result.engine == (documents.ENGINE_DOCLING if documents.docling_usable(weights) else documents.ENGINE_PDF)
    assert not documents.docling_usable(None)


def test_every_kind_renders_as_md_text_and_json():
    # Given one result of each kind
    doc = DocumentResult(engine="markitdown", source_format="md", title="T", markdown="# T\n\nbody", text="T\n\nbody")
    web = WebPageResult(
        url="https://a.example/x", title="Moths", author="Ada", text="lamps", markdown="lamps", engine="t"
    )
    box = ((0.0, 0.0), (9.0, 0.0), (9.0, 5.0), (0.0, 5.0))
    page = OcrPage(number=1, width=10, height=6, lines=[OcrLine(text="hello", confidence=0.9, box=box)])
    ocr = OcrResult(
        pages=[page, page.model_copy(update={"number": 2})], text="hello\n\nhello", engine="r", device="cpu"
    )
    # Then each format is the right bytes and media type
    assert render(doc, "md") == ("# T\n\nbody\n", "text/markdown; charset=utf-8")
    assert render(web, "text")[0] == "lamps\n"
    assert render(web, "md")[0].startswith("# Moths\n\n- source: <https://a.example/x>\n- author: Ada\n")
    assert "## Page 2 (10 x 6)\n\nhello" in render(ocr, "md")[0]
    body, media_type = render(ocr, "json")
    assert OcrResult.model_validate_json(body) == ocr and media_type == "application/json"
    with pytest.raises(InvalidInput):
        render(doc, "srt")


def test_pdfs_convert_in_parallel_threads(tmp_path):
    # Given one PDF converted from four threads at once (a node's workers): Then every result is whole
    from concurrent.futures import ThreadPoolExecutor

    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: convert(pdf, LIMITS), range(4)))
    assert all(r.pages == results[0].pages and len(r.pages) == 3 for r in results)


def test_a_pdf_pdfplumber_cannot_parse_keeps_pdfiums_text(tmp_path, monkeypatch):
    # Given a PDF that PDFium reads but pdfminer does not (as with one PDFium repaired)
    import pdfplumber
    from pdfplumber.utils.exceptions import PdfminerException

    def refuse(*args, **kwargs):
        raise PdfminerException("unexpected EOF")

    monkeypatch.setattr(pdfplumber, "open", refuse)
    # Then the pages and the Markdown come from PDFium, without tables
    result = convert(files.pdf_3_pages(tmp_path / "report.pdf"), LIMITS)
    assert len(result.pages) == 3 and result.tables == [] and "charlie cherry" in result.markdown
