"""Telling media from other bytes by content, not by file name.

The gateway sniffs the first bytes of an upload: a file that is clearly
something no processor takes (a PDF, a ZIP, an image, an executable) is refused
with 415 before it is queued. Bytes it cannot name are given the benefit of
the doubt as audio; the node then decodes them and fails the job with
DECODE_FAILED if they are not media, so the user sees a clear job error.
"""

from __future__ import annotations

from schemas.names import Kind

SNIFF_BYTES = 64

_VIDEO_BRANDS = (b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"dash")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"F4A ")

# (prefix, offset, kind or None for "not media", label)
_SIGNATURES: list[tuple[bytes, int, Kind | None, str]] = [
    (b"RIFF", 0, Kind.AUDIO, "wav/avi"),
    (b"ID3", 0, Kind.AUDIO, "mp3"),
    (b"fLaC", 0, Kind.AUDIO, "flac"),
    (b"OggS", 0, Kind.AUDIO, "ogg"),
    (b"#!AMR", 0, Kind.AUDIO, "amr"),
    (b"\x1aE\xdf\xa3", 0, Kind.VIDEO, "matroska/webm"),
    (b"FLV", 0, Kind.VIDEO, "flv"),
    (b"%PDF", 0, None, "pdf"),
    (b"PK\x03\x04", 0, None, "zip"),
    (b"\x89PNG", 0, None, "png"),
    (b"\xff\xd8\xff", 0, None, "jpeg"),
    (b"GIF8", 0, None, "gif"),
    (b"\x7fELF", 0, None, "elf"),
    (b"MZ", 0, None, "exe"),
    (b"\x1f\x8b", 0, None, "gzip"),
]


def sniff(head: bytes) -> tuple[Kind | None, str]:
    """Returns (kind, label); kind None means "certainly not media"."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return Kind.AUDIO, "m4a"
        return Kind.VIDEO, "mp4" if brand in _VIDEO_BRANDS else "iso-bmff"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Kind.VIDEO, "avi"
    for prefix, offset, kind, label in _SIGNATURES:
        if head[offset : offset + len(prefix)] == prefix:
            return kind, label
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return Kind.AUDIO, "mpeg-audio"
    stripped = head.lstrip()
    if stripped[:1] in (b"<", b"{", b"[") or stripped[:5].lower() == b"<html":
        return None, "text/markup"
    return Kind.AUDIO, "unknown"
