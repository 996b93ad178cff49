"""A web page's main text and metadata, with the boilerplate removed.

trafilatura finds the article in a page (menus, cookie banners, footers and
link lists go) and reads its metadata (title, author, date) from the markup
and the usual meta tags; it is the extractor that leads the public
benchmarks of this task, and it needs no model. `extract` is a pure function
of the HTML bytes and their URL; `read_web_page` fetches them first under the
SSRF guard (processors/web_fetch.py).
"""

from __future__ import annotations

import time
from http.cookiejar import CookieJar
from typing import Any

from processors import markdown_structure as mds
from processors.web_fetch import WebFetchLimits, fetch_page
from schemas.document_errors import DecodeFailed, UnsupportedDocument
from schemas.documents import WebPageResult

ENGINE = "trafilatura"
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", ""})


def _language(tree: Any) -> str | None:
    """What the page says it is written in: <html lang> or Content-Language."""
    lang = tree.get("lang") or tree.get("{http://www.w3.org/XML/1998/namespace}lang")
    if not lang:
        metas = tree.xpath('//meta[translate(@http-equiv, "CONTENT-LANGUAGE", "content-language")="content-language"]')
        lang = metas[0].get("content") if metas else None
    return lang.strip().split(",")[0].strip() or None if lang else None


def extract(html: bytes | str, url: str) -> WebPageResult:
    """Raises DecodeFailed when the page has no main text to extract."""
    import trafilatura
    from trafilatura.settings import Document
    from trafilatura.xml import xmltotxt

    t0 = time.monotonic()
    tree = trafilatura.load_html(html)
    if tree is None:
        raise DecodeFailed("not an HTML page trafilatura can parse")
    language = _language(tree)
    doc = trafilatura.bare_extraction(
        tree, url=url, with_metadata=True, include_links=True, include_formatting=True, include_tables=True
    )
    if not isinstance(doc, Document) or doc.body is None:
        raise DecodeFailed("no main text found on the page (one built by JavaScript?)")
    markdown = xmltotxt(doc.body, True).strip()
    return WebPageResult(
        url=url,
        title=doc.title or None,
        author=doc.author or None,
        date=doc.date or None,
        language=language,
        links_count=len(doc.body.findall(".//ref")),
        text=mds.to_text(markdown),
        markdown=markdown,
        engine=ENGINE,
        processing_s=round(time.monotonic() - t0, 3),
    )


def read_web_page(url: str, limits: WebFetchLimits, cookies: CookieJar | None = None) -> WebPageResult:
    """Fetch (SSRF-guarded, capped, timed, with the owner's cookies if any)
    and extract; the result carries the final URL."""
    page = fetch_page(url, limits, cookies)
    media_type = page.content_type.split(";", 1)[0].strip().lower()
    if media_type not in HTML_TYPES:
        hint = "; send it with kind url to transcribe it" if media_type.startswith(("audio/", "video/")) else ""
        raise UnsupportedDocument(f"{page.url} is {media_type}, not an HTML page{hint}")
    return extract(page.body, page.url)
