"""Checking an uploaded cookie file before a node hands it to yt-dlp.

yt-dlp reads the Netscape format that browser extensions export: one cookie
per line, seven tab-separated fields, `#` comments, and `#HttpOnly_` before
the domain of HTTP-only cookies. A file that is not that is refused at upload,
not discovered by a failing download later.
"""

from __future__ import annotations

from schemas.errors import InvalidInput

MAX_COOKIE_FILE_BYTES = 1024 * 1024
HEADER = "# Netscape HTTP Cookie File"
HTTPONLY_PREFIX = "#HttpOnly_"


def _is_cookie_line(line: str) -> bool:
    fields = line.split("\t")
    if len(fields) != 7:
        return False
    domain, subdomains, path, secure, expires, name, _value = fields
    return (
        bool(domain and name and path)
        and subdomains.upper() in ("TRUE", "FALSE")
        and secure.upper() in ("TRUE", "FALSE")
        and expires.lstrip("-").isdigit()
    )


def normalize(raw: bytes) -> tuple[bytes, int]:
    """The file with the header yt-dlp expects and Unix line ends, and how
    many cookies it holds. Raises InvalidInput (nothing of the content is
    echoed back: it is a credential)."""
    if len(raw) > MAX_COOKIE_FILE_BYTES:
        raise InvalidInput(f"the cookie file is over {MAX_COOKIE_FILE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the cookie file is not UTF-8 text") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    count = 0
    for n, line in enumerate(lines, start=1):
        body = line[len(HTTPONLY_PREFIX) :] if line.startswith(HTTPONLY_PREFIX) else line
        if not line.strip() or (line.startswith("#") and body is line):
            continue
        if not _is_cookie_line(body):
            raise InvalidInput(f"line {n} is not a Netscape cookie line (7 tab-separated fields)")
        count += 1
    if count == 0:
        raise InvalidInput("the cookie file holds no cookies (expected the Netscape format yt-dlp reads)")
    kept = [
        ln
        for ln in lines
        if not ln.startswith("# Netscape HTTP Cookie File") and not ln.startswith("# HTTP Cookie File")
    ]
    return ("\n".join([HEADER, *kept]).rstrip("\n") + "\n").encode(), count
