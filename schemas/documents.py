"""The results of document, web page and image (OCR) jobs.

One model per kind, each carrying the engine that made it: a node without
docling's layout models converts documents with the model-free path, and the
result says so rather than leaving people to guess from the output.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Point = tuple[float, float]


class DocumentPage(BaseModel):
    number: int  # 1-based, as a reader counts pages
    text: str


class Heading(BaseModel):
    level: int = Field(ge=1, le=6)
    text: str


class DocumentResult(BaseModel):
    engine: str  # e.g. "pypdfium2+pdfplumber", "markitdown", "docling"
    source_format: str  # pdf, docx, pptx, xlsx, html, epub, md, text
    title: str | None = None
    pages: list[DocumentPage] = Field(default_factory=list)  # PDFs: one per page
    headings: list[Heading] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)  # each a Markdown table
    markdown: str
    text: str
    processing_s: float | None = None


class WebPageResult(BaseModel):
    url: str  # the final URL, after redirects
    title: str | None = None
    author: str | None = None
    date: str | None = None  # ISO 8601 date, as the page states it
    language: str | None = None
    links_count: int = 0  # links in the main text, boilerplate excluded
    text: str
    markdown: str
    engine: str
    processing_s: float | None = None


class OcrLine(BaseModel):
    text: str
    confidence: float
    box: tuple[Point, Point, Point, Point]  # clockwise from top-left, in pixels


class OcrPage(BaseModel):
    number: int
    width: int
    height: int
    lines: list[OcrLine]  # in reading order


class OcrResult(BaseModel):
    pages: list[OcrPage]
    text: str
    engine: str
    device: str  # "cpu" or "cuda"
    processing_s: float | None = None
