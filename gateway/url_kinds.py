"""Which kind a URL sent without one is: media to transcribe, or a web page.

`{"url": …}` alone once always meant media. With web pages a job kind of
their own, a bare URL is a web page unless it is media: a site one of
yt-dlp's site extractors claims (its generic, any-page extractor aside), or
a path ending in a media file's extension. Decided offline, from the URL
alone: the gateway never fetches a user's URL (the nodes do, behind the
SSRF guard). A page that turns out not to be HTML fails on the node with a
code that says to send it as `kind: "url"`; `kind` always overrides.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from schemas.names import Kind

MEDIA_SUFFIXES = frozenset(
    ".mp3 .wav .flac .ogg .oga .opus .m4a .aac .wma .aiff .aif .amr "
    ".mp4 .m4v .mkv .webm .mov .avi .wmv .flv .mpeg .mpg .ts .3gp .m3u8 .mpd".split()
)


@functools.cache
def _site_extractors() -> tuple[Any, ...]:
    """yt-dlp's extractors of named sites (about 1,750); their URL patterns
    compile on first use, so the first call costs about a second."""
    from yt_dlp.extractor import gen_extractor_classes

    return tuple(ie for ie in gen_extractor_classes() if ie.ie_key() != "Generic")


def kind_of_url(url: str) -> Kind:
    path = PurePosixPath(urlsplit(url).path)
    if path.suffix.lower() in MEDIA_SUFFIXES:
        return Kind.URL
    if any(ie.suitable(url) for ie in _site_extractors()):
        return Kind.URL
    return Kind.WEB


async def detect(url: str) -> Kind:
    """`kind_of_url` off the event loop (the first call compiles patterns)."""
    return await asyncio.to_thread(kind_of_url, url)
