"""Render a stored document, web page or OCR result as Markdown, text or JSON.

The same contract as schemas/formats.py for transcripts: pure functions of
the one stored JSON result, so the gateway renders `?format=md|text|json`
without the node storing more than one copy. The media types are that
module's, so a format means the same bytes on the wire for every kind.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.documents import DocumentResult, OcrResult, WebPageResult
from schemas.formats import render_with

Rendered = DocumentResult | WebPageResult | OcrResult


def to_json(r: Rendered) -> str:
    return r.model_dump_json(exclude_none=True)


def to_text(r: Rendered) -> str:
    return r.text.strip() + "\n"


def _web_markdown(r: WebPageResult) -> str:
    """The page's own Markdown under a short header of where it came from."""
    facts = [f"- source: <{r.url}>"]
    facts += [
        f"- {name}: {value}"
        for name, value in (("author", r.author), ("date", r.date), ("language", r.language))
        if value
    ]
    head = f"# {r.title}\n\n" if r.title and not r.markdown.startswith(f"# {r.title}") else ""
    return head + "\n".join(facts) + "\n\n" + r.markdown.strip() + "\n"


def _ocr_markdown(r: OcrResult) -> str:
    """One section per page when there are several; a line of text per OCR line."""
    parts = [f"# Recognised text\n\n- engine: {r.engine} on {r.device}"]
    for page in r.pages:
        if len(r.pages) > 1:
            parts.append(f"## Page {page.number} ({page.width} x {page.height})")
        parts.append("\n".join(line.text for line in page.lines) or "_(no text found)_")
    return "\n\n".join(parts) + "\n"


def to_markdown(r: Rendered) -> str:
    if isinstance(r, WebPageResult):
        return _web_markdown(r)
    if isinstance(r, OcrResult):
        return _ocr_markdown(r)
    return r.markdown.strip() + "\n"


RENDERERS: dict[str, Callable[[Rendered], str]] = {
    "json": to_json,
    "text": to_text,
    "txt": to_text,
    "md": to_markdown,
}


def render(r: Rendered, fmt: str) -> tuple[str, str]:
    """Returns (body, media type)."""
    return render_with(RENDERERS, r, fmt)
