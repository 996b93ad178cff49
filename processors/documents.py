"""Documents to Markdown: PDF, DOCX, PPTX, XLSX, HTML, EPUB, Markdown, text.

A pure function of a file path and explicit limits (`convert`), so the node
wiring can run it in a worker thread and the tests can run it alone.

- PDFs are opened by pypdfium2 (PDFium, Chrome's PDF engine): fast, tolerant
  of real-world files, and it tells a password-protected file from a broken
  one. It gives the per-page text, the title and the outline (headings).
  Ruled tables are read by pdfplumber, which markitdown already depends on.
- Everything else goes through markitdown, model-free, whose converters
  (mammoth, python-pptx, openpyxl, BeautifulSoup) all end in Markdown.
- docling's layout models convert PDFs only where the node has their weights
  installed (`DocumentLimits.docling_artifacts`); they are never downloaded.
- Zip-based formats are checked for zip bombs before any library opens them.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from processors import markdown_structure as mds
from processors.zip_guard import ZipLimits, check_archive
from schemas.document_errors import (
    DecodeFailed,
    DocumentEncrypted,
    DocumentTooLarge,
    UnsupportedDocument,
)
from schemas.documents import DocumentPage, DocumentResult, Heading
from schemas.media_sniff import SNIFF_BYTES, sniff
from schemas.names import Kind

log = logging.getLogger("gpubus.processors.documents")

SUFFIX_FORMATS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".epub": "epub",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "md",
    ".markdown": "md",
    ".txt": "text",
}
FORMATS = frozenset(SUFFIX_FORMATS.values())
ZIP_FORMATS = frozenset({"docx", "pptx", "xlsx", "epub"})
MARKITDOWN_EXTENSIONS = {"text": ".txt"}  # the rest: "." + format
ENGINE_PDF = "pypdfium2+pdfplumber"
ENGINE_MARKITDOWN = "markitdown"
ENGINE_DOCLING = "docling"
PDFIUM_ERR_PASSWORD = 4  # FPDF_ERR_PASSWORD
_SLIDE_MARK = "<!-- Slide number:"
_PDFIUM_LOCK = threading.Lock()
PAGE_BREAK = "\n\n---\n\n"  # between PDF pages in the Markdown
OnPage = Callable[[int, int], None]  # (pages done, pages in all)


@dataclass(frozen=True)
class DocumentLimits:
    max_pages: int = 2000
    zip: ZipLimits = field(default_factory=ZipLimits)
    docling_artifacts: Path | None = None  # docling's pre-installed model weights; None: model-free


def detect_format(path: Path, filename: str | None = None) -> str:
    """From the name, checked against the first bytes: a '.pdf' that is not
    a PDF is a broken upload, not a text file."""
    suffix = Path(filename or path.name).suffix.lower()
    head = _head(path)
    fmt = SUFFIX_FORMATS.get(suffix) or ("pdf" if b"%PDF-" in head else None) or _sniffed_format(head, filename)
    if fmt is None:
        raise UnsupportedDocument(f"not a document format this node converts ({suffix or 'no extension'})")
    if fmt == "pdf" and b"%PDF-" not in head:
        raise DecodeFailed("not a PDF: no %PDF- header")
    if fmt in ZIP_FORMATS and not head.startswith(b"PK"):
        raise DecodeFailed(f"not a {fmt} file: not a zip archive")
    return fmt


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


def _sniffed_format(head: bytes, filename: str | None) -> str | None:
    """A name without a known extension: what the gateway's sniffing made
    of the bytes (a text upload called `notes`, a DOCX called `report`)."""
    kind, label = sniff(head, filename)
    return label if kind == Kind.DOCUMENT and label in FORMATS else None


def docling_usable(artifacts: Path | None) -> bool:
    """docling only with its weights already on disk: it would otherwise
    fetch them from a model hub on first use."""
    return artifacts is not None and artifacts.is_dir() and importlib.util.find_spec("docling") is not None


def convert(
    path: Path, limits: DocumentLimits, *, filename: str | None = None, on_page: OnPage | None = None
) -> DocumentResult:
    """Raises DecodeFailed, DocumentEncrypted, ArchiveTooLarge, DocumentTooLarge, UnsupportedDocument.
    `on_page(done, total)` is called as a PDF's pages are converted (it may
    raise, say JobCancelled, to stop the conversion there)."""
    t0 = time.monotonic()
    fmt = detect_format(path, filename)
    if fmt in ZIP_FORMATS:
        check_archive(path, limits.zip)
    result = _pdf(path, limits, on_page) if fmt == "pdf" else _markitdown_document(path, fmt)
    result.processing_s = round(time.monotonic() - t0, 3)
    log.info("converted %s (%s) with %s in %.2fs", path.name, fmt, result.engine, result.processing_s)
    return result


# --- PDF ---------------------------------------------------------------------


def _open_pdf(path: Path) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == PDFIUM_ERR_PASSWORD:
            raise DocumentEncrypted("the PDF is password-protected") from e
        raise DecodeFailed(f"not a readable PDF ({e})") from e


def _outline(pdf: Any) -> list[Heading]:
    """The PDF's bookmarks: the only headings a PDF states without a layout model."""
    return [
        Heading(level=min(b.level + 1, 6), text=b.get_title().strip())
        for b in pdf.get_toc(max_depth=6)
        if b.get_title().strip()
    ]


def _page_texts(pdf: Any) -> list[str]:
    texts = []
    for page in pdf:
        textpage = page.get_textpage()
        texts.append(textpage.get_text_bounded().replace("\r\n", "\n").strip())
        textpage.close()
        page.close()
    return texts


def _read_pdf(path: Path, limits: DocumentLimits) -> tuple[str | None, list[str], list[Heading]]:
    """(title, page texts, outline), under the lock: PDFium is not thread-safe,
    and a node runs several jobs in threads of one process."""
    with _PDFIUM_LOCK:
        pdf = _open_pdf(path)
        try:
            if len(pdf) > limits.max_pages:
                raise DocumentTooLarge(f"the PDF has {len(pdf)} pages; the limit is {limits.max_pages}")
            title = (pdf.get_metadata_value("Title") or "").strip() or None
            return title, _page_texts(pdf), _outline(pdf)
        finally:
            pdf.close()


def _pdf(path: Path, limits: DocumentLimits, on_page: OnPage | None = None) -> DocumentResult:
    title, texts, outline = _read_pdf(path, limits)
    docling = _docling_markdown(path, limits.docling_artifacts)
    if docling is not None:
        markdown, tables, engine = docling, mds.tables(docling), ENGINE_DOCLING
    else:
        markdown, tables = _pdfplumber_markdown(path, texts, on_page)
        engine = ENGINE_PDF
    return DocumentResult(
        engine=engine,
        source_format="pdf",
        title=title,
        pages=[DocumentPage(number=i, text=t) for i, t in enumerate(texts, start=1)],
        headings=outline or mds.headings(markdown),
        tables=tables,
        markdown=(f"# {title}\n\n" if title and engine != ENGINE_DOCLING else "") + markdown,
        text="\n\n".join(texts),
    )


def _pdfplumber_markdown(path: Path, texts: list[str], on_page: OnPage | None = None) -> tuple[str, list[str]]:
    """Per page: the prose outside ruled tables, then the tables in Markdown.
    A page pdfplumber cannot parse keeps PDFium's text and no tables."""
    import pdfplumber

    errors = _pdfminer_errors()
    parts: list[str] = list(texts)
    tables: list[str] = []
    try:
        doc = pdfplumber.open(str(path))
    except errors as e:
        log.warning("pdfplumber could not open %s (%s); PDFium's text, no tables", path.name, e)
        return PAGE_BREAK.join(parts), tables
    with doc:
        for index, page in enumerate(doc.pages[: len(texts)]):
            try:
                found = [t for t in page.find_tables() if t.extract()]
                page_tables = [mds.table(t.extract()) for t in found]
                rest = page
                for t in found:
                    rest = rest.outside_bbox(t.bbox)
                parts[index] = "\n\n".join([(rest.extract_text() or "").strip(), *page_tables]).strip()
                tables += page_tables
            except errors as e:
                log.warning("pdfplumber could not read page %d of %s: %s", index + 1, path.name, e)
            page.close()
            if on_page is not None:
                on_page(index + 1, len(texts))
    return PAGE_BREAK.join(parts), tables


def _pdfminer_errors() -> tuple[type[Exception], ...]:
    """What pdfminer raises on a PDF it cannot parse (PDFium may have repaired it)."""
    from pdfminer.pdfparser import PDFSyntaxError
    from pdfminer.psparser import PSException
    from pdfplumber.utils.exceptions import PdfminerException

    return (PSException, PDFSyntaxError, PdfminerException, ValueError, KeyError, TypeError)


@lru_cache(maxsize=1)
def _docling_converter(artifacts: Path) -> Any:
    """One converter per process: building it loads the layout models."""
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import PdfPipelineOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption

    options = PdfPipelineOptions(artifacts_path=str(artifacts), do_ocr=False)
    return DocumentConverter(format_options={InputFormat.PDF: PdfFormatOption(pipeline_options=options)})


def _docling_markdown(path: Path, artifacts: Path | None) -> str | None:
    """docling's Markdown, or None where it is not installed with its weights or
    fails on this file: the model-free path then serves the job, and says so."""
    if artifacts is None or not docling_usable(artifacts):
        return None
    try:
        return str(_docling_converter(artifacts).convert(str(path)).document.export_to_markdown())
    except (OSError, RuntimeError, ValueError) as e:  # missing weights, a model or backend error
        log.warning("docling failed on %s (%s: %s); converting without models", path.name, type(e).__name__, e)
        return None


# --- everything else: markitdown ------------------------------------------------


def _converter(fmt: str) -> Any:
    from markitdown.converters import (
        DocxConverter,
        EpubConverter,
        HtmlConverter,
        PlainTextConverter,
        PptxConverter,
        XlsxConverter,
    )

    converters: dict[str, Any] = {
        "docx": DocxConverter,
        "pptx": PptxConverter,
        "xlsx": XlsxConverter,
        "epub": EpubConverter,
    }
    converters |= {"html": HtmlConverter, "md": PlainTextConverter, "text": PlainTextConverter}
    return converters[fmt]()


@cache
def _markitdown(fmt: str) -> Any:
    """A MarkItDown with the one converter for `fmt`: without the built-in set,
    a file that fails its own converter cannot fall through to another, such
    as the zip converter, which would unpack archives nested in a DOCX past the
    zip check. No plugins, LLM or cloud services either: local only."""
    from markitdown import MarkItDown

    markitdown = MarkItDown(enable_builtins=False, enable_plugins=False)
    markitdown.register_converter(_converter(fmt))
    return markitdown


def _slides(markdown: str) -> list[DocumentPage]:
    """markitdown marks each PowerPoint slide; a slide is a deck's page."""
    chunks = markdown.split(_SLIDE_MARK)[1:]
    return [DocumentPage(number=i, text=mds.to_text(_SLIDE_MARK + c)) for i, c in enumerate(chunks, start=1)]


def _markitdown_document(path: Path, fmt: str) -> DocumentResult:
    from markitdown import FileConversionException, StreamInfo, UnsupportedFormatException

    extension = MARKITDOWN_EXTENSIONS.get(fmt, "." + fmt)
    try:
        converted = _markitdown(fmt).convert_local(str(path), stream_info=StreamInfo(extension=extension))
    except UnsupportedFormatException as e:
        raise UnsupportedDocument(f"markitdown cannot convert this {fmt} file") from e
    except FileConversionException as e:
        raise DecodeFailed(f"the {fmt} file could not be converted ({str(e).strip()[-300:]})") from e
    markdown = converted.markdown.strip()
    return DocumentResult(
        engine=ENGINE_MARKITDOWN,
        source_format=fmt,
        title=(converted.title or "").strip() or mds.title(markdown),
        pages=_slides(markdown) if fmt == "pptx" else [],
        headings=mds.headings(markdown),
        tables=mds.tables(markdown),
        markdown=markdown,
        text=mds.to_text(markdown),
    )
