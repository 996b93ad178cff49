"""Documents and images made at test time, with known words in them: fpdf2
PDFs (and pypdf to encrypt one), python-docx, python-pptx and openpyxl files,
Pillow images, and hostile variants (truncated, zip bomb, pixel bomb)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

PDF_PAGE_WORDS = [["alpha", "apple"], ["bravo", "banana"], ["charlie", "cherry"]]
TABLE_ROWS = [("Fruit", "Count"), ("Mango", "12"), ("Kiwi", "7")]
OCR_LINES = ["The quick brown fox", "jumps over the lazy dog", "Invoice number 4217 paid"]


def pdf_3_pages(path: Path, *, title: str = "Quarterly Report") -> Path:
    """Three pages with known words each; a ruled table on page 2."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=14)
    for number, words in enumerate(PDF_PAGE_WORDS, start=1):
        pdf.add_page()
        pdf.cell(text=f"Page {number} " + " ".join(words))
        pdf.ln(20)
        if number == 2:
            with pdf.table() as table:
                for row in TABLE_ROWS:
                    cells = table.row()
                    for value in row:
                        cells.cell(value)
    pdf.output(str(path))
    return path


def encrypted_pdf(path: Path, source: Path) -> Path:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=str(source))
    writer.encrypt("secret")
    writer.write(str(path))
    return path


def truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def docx_with_headings(path: Path) -> Path:
    import docx

    doc = docx.Document()
    doc.core_properties.title = "Field Guide"
    doc.add_heading("Field Guide", level=1)
    doc.add_paragraph("Owls hunt at night in quiet woodland.")
    doc.add_heading("Habitat", level=2)
    doc.add_paragraph("Herons wade in shallow marshes.")
    table = doc.add_table(rows=len(TABLE_ROWS), cols=2)
    for r, row in enumerate(TABLE_ROWS):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    doc.save(str(path))
    return path


def pptx_two_slides(path: Path) -> Path:
    from pptx import Presentation

    deck = Presentation()
    for title, body in [("Launch plan", "rockets ready"), ("Budget", "seventy thousand")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    deck.save(str(path))
    return path


def xlsx_sheet(path: Path) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "Inventory"
    for row in TABLE_ROWS:
        sheet.append(row)
    book.save(str(path))
    return path


def zip_bomb_docx(path: Path, source: Path, *, expanded_bytes: int) -> Path:
    """A real DOCX plus one entry of zeros that inflates to `expanded_bytes`
    (a few hundred KiB on disk)."""
    path.write_bytes(source.read_bytes())
    zero_mib = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("word/media/zeros.bin", "w") as entry:
            for _ in range(expanded_bytes // len(zero_mib)):
                entry.write(zero_mib)
    return path


def docx_with_nested_zip(path: Path, source: Path, *, inner_bytes: int, broken: bool = False) -> Path:
    """A DOCX carrying a zip (of zeros) as an embedded file: small to the
    outer zip check, a bomb to anything that unpacks nested archives. Broken:
    the zip holds nothing else, so the DOCX converter fails on it."""
    inner = path.with_suffix(".inner.zip")
    zip_bomb_docx(inner, source, expanded_bytes=inner_bytes)
    path.unlink(missing_ok=True)
    if not broken:
        path.write_bytes(source.read_bytes())
    with zipfile.ZipFile(path, "a") as zf:
        zf.write(inner, "word/embeddings/inner.zip")
    return path


def understate_sizes(path: Path, entry_name: str, declared: int) -> Path:
    """Rewrite one entry's uncompressed size in both zip headers, as a bomb
    that lies about itself would."""
    data = bytearray(path.read_bytes())
    name = entry_name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = data.find(signature)
        while at != -1:
            name_len = struct.unpack_from("<H", data, at + (26 if signature == b"PK\x03\x04" else 28))[0]
            if bytes(data[at + name_at : at + name_at + name_len]) == name:
                struct.pack_into("<I", data, at + size_at, declared)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


def text_png(path: Path, lines: list[str] = OCR_LINES) -> Path:
    """Black text on white, in Pillow's own scalable font (no system fonts)."""
    from PIL import Image, ImageDraw, ImageFont

    # At least 300 px tall: PP-OCR's detector scales the short side up to 736 px,
    # so a one-line strip would be OCRed at five times its size.
    image = Image.new("RGB", (900, max(300, 60 + 85 * len(lines))), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * 85), line, fill="black", font=font)
    image.save(path)
    return path


def multipage_tiff(path: Path, pages: list[list[str]], *, compression: str | None = None) -> Path:
    """`compression` ("tiff_deflate") keeps a long one small enough to upload."""
    from PIL import Image

    frames = [Image.open(text_png(path.with_suffix(f".{i}.png"), lines)) for i, lines in enumerate(pages)]
    frames[0].save(path, save_all=True, append_images=frames[1:], compression=compression)
    return path


def pixel_bomb_png(path: Path, *, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG whose header declares width x height pixels; the data is a few
    bytes (never decoded: the size alone must refuse it)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


EPUB_FILES = {
    "META-INF/container.xml": (
        '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
        '<rootfiles><rootfile full-path="content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>'
    ),
    "content.opf": (
        '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Sea Stories</dc:title>'
        '<dc:identifier id="id">sea-1</dc:identifier><dc:language>en</dc:language></metadata>'
        '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest>'
        '<spine><itemref idref="c1"/></spine></package>'
    ),
    "c1.xhtml": (
        '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>One</title></head>'
        "<body><h1>The Lighthouse</h1><p>Keepers trimmed the wicks each dusk.</p></body></html>"
    ),
}


def epub_book(path: Path) -> Path:
    """A minimal EPUB 3: the mimetype first and stored, one chapter."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        for name, body in EPUB_FILES.items():
            zf.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED)
    return path
