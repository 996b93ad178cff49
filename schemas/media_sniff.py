"""Telling media, documents and images from other bytes by content.

The gateway sniffs the first bytes of an upload and names its kind: audio or
video, a document (PDF, an Office or EPUB zip, HTML, Markdown, plain text) or
an image (PNG, JPEG, WebP, TIFF, BMP). A file that is clearly something no
processor takes (an executable, an archive that is not an Office file, a GIF,
JSON or XML) is refused with 415 before it is queued. Binary bytes it cannot
name are given the benefit of the doubt as audio; the node then decodes them
and fails the job with DECODE_FAILED if they are not media, so the user sees
a clear job error. The node's document engine reads the same labels
(processors/documents.py), so both sides agree on what a file is.
"""

from __future__ import annotations

import codecs
import re
import struct
from pathlib import PurePath

from schemas.names import Kind

# Enough for the first few entries of an Office zip's local headers (where
# `[Content_Types].xml` and `word/`, `ppt/` or `xl/` names show) and for an
# HTML page's doctype after a long comment.
SNIFF_BYTES = 8192

_VIDEO_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"dash")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"F4A ")
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# (prefix, kind or None for "no processor takes it", label)
_SIGNATURES: list[tuple[bytes, Kind | None, str]] = [
    (b"ID3", Kind.AUDIO, "mp3"),
    (b"fLaC", Kind.AUDIO, "flac"),
    (b"OggS", Kind.AUDIO, "ogg"),
    (b"#!AMR", Kind.AUDIO, "amr"),
    (b"\x1aE\xdf\xa3", Kind.VIDEO, "matroska/webm"),
    (b"FLV", Kind.VIDEO, "flv"),
    (b"%PDF", Kind.DOCUMENT, "pdf"),
    (b"\x89PNG", Kind.IMAGE, "png"),
    (b"\xff\xd8\xff", Kind.IMAGE, "jpeg"),
    (b"II*\x00", Kind.IMAGE, "tiff"),
    (b"MM\x00*", Kind.IMAGE, "tiff"),
    (b"GIF8", None, "gif"),
    (b"\x7fELF", None, "elf"),
    (b"MZ", None, "exe"),
    (b"\xca\xfe\xba\xbe", None, "mach-o"),
    (b"\xcf\xfa\xed\xfe", None, "mach-o"),
    (b"\x1f\x8b", None, "gzip"),
    (b"7z\xbc\xaf", None, "7z"),
    (b"Rar!", None, "rar"),
    (b"BZh", None, "bzip2"),
    (b"\xfd7zXZ", None, "xz"),
]

_OOXML_PARTS = (("word/", "docx"), ("ppt/", "pptx"), ("xl/", "xlsx"))
_OOXML_MARKERS = ("[Content_Types].xml", "docProps/", "_rels/")
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<p>", b"<div", b"<h1")
_TEXT_SUFFIXES = {".md": "md", ".markdown": "md", ".txt": "text"}
# JSON's first value, not any text that opens with a bracket (`[section]` of an INI or TOML file)
_JSON_START = re.compile(rb'^(\{\s*["}]|\[\s*[-\d"{\[\]])')


def _zip_names(head: bytes) -> list[tuple[str, bytes]]:
    """(name, first bytes of its data) of each zip entry whose local header
    lies inside `head`; stops at an entry whose size is not in its header
    (streamed with a data descriptor) or runs past `head`."""
    found: list[tuple[str, bytes]] = []
    at = 0
    while head[at : at + 4] == b"PK\x03\x04" and at + 30 <= len(head):
        (flags,) = struct.unpack_from("<H", head, at + 6)
        size, name_len, extra_len = struct.unpack_from("<I4xHH", head, at + 18)
        data_at = at + 30 + name_len + extra_len
        name = head[at + 30 : at + 30 + name_len].decode("utf-8", "replace")
        found.append((name, head[data_at : data_at + 32]))
        if flags & 0x08 or size == 0 and not name.endswith("/"):
            break
        at = data_at + size
    return found


def _zip(head: bytes) -> tuple[Kind | None, str]:
    """An Office (OOXML) or EPUB zip is a document; any other archive is not."""
    entries = _zip_names(head)
    if entries and entries[0][0] == "mimetype" and entries[0][1].startswith(b"application/epub+zip"):
        return Kind.DOCUMENT, "epub"
    names = [name for name, _ in entries]
    for prefix, label in _OOXML_PARTS:
        if any(n.startswith(prefix) for n in names):
            return Kind.DOCUMENT, label
    if any(n.startswith(m) for n in names for m in _OOXML_MARKERS):
        return Kind.DOCUMENT, "ooxml"
    return None, "zip"


def _text(head: bytes) -> str | None:
    """The head as text if it is UTF-8 with no control characters but
    white space (a multi-byte character cut at the end is allowed)."""
    if b"\x00" in head:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 32 and ch not in "\t\n\r\f" for ch in text):
        return None
    return text.lstrip("\ufeff")


def _text_kind(text: str, filename: str | None) -> tuple[Kind | None, str]:
    suffix = PurePath(filename or "").suffix.lower()
    stripped = text.lstrip().encode()
    lowered = stripped[:2048].lower()
    if stripped.startswith(b"<"):
        if any(m in lowered for m in _HTML_MARKERS):
            return Kind.DOCUMENT, "html"
        return None, "xml"
    if suffix in _TEXT_SUFFIXES:
        return Kind.DOCUMENT, _TEXT_SUFFIXES[suffix]
    if _JSON_START.match(stripped):
        return None, "json"
    return Kind.DOCUMENT, "text"


def _riff(head: bytes) -> tuple[Kind, str]:
    form = head[8:12]
    if form == b"WEBP":
        return Kind.IMAGE, "webp"
    if form == b"AVI ":
        return Kind.VIDEO, "avi"
    return Kind.AUDIO, "wav"


def _bmp(head: bytes) -> bool:
    return head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_HEADER_SIZES


def sniff(head: bytes, filename: str | None = None) -> tuple[Kind | None, str]:
    """Returns (kind, label); kind None means "no processor takes this".
    `filename` only tells Markdown from plain text (and JSON-looking text);
    what a file is comes from its bytes."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return Kind.AUDIO, "m4a"
        return Kind.VIDEO, "mp4" if brand in _VIDEO_BRANDS else "iso-bmff"
    if head[:4] == b"RIFF":
        return _riff(head)
    if head[:4] == b"PK\x03\x04":
        return _zip(head)
    for prefix, kind, label in _SIGNATURES:
        if head.startswith(prefix):
            return kind, label
    if _bmp(head):
        return Kind.IMAGE, "bmp"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return Kind.AUDIO, "mpeg-audio"
    text = _text(head)
    if text is not None and text.strip():
        return _text_kind(text, filename)
    return Kind.AUDIO, "unknown"
