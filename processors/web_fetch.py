"""Fetching one web page under the SSRF rules, within a size cap and a deadline.

The same rules as media URLs (schemas/url_guard.py), applied in-process with
the standard library rather than in yt-dlp's child: every name is resolved
here and every address it resolves to is checked (one forbidden address
refuses the name), then the connection goes to the checked address itself,
so a DNS answer that changes between check and connect cannot redirect it.
Each redirect is a new URL and goes through the same checks. No proxy is
used: http.client reads no proxy settings, and a proxy would resolve names
where the guard cannot see.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from urllib.parse import urljoin, urlsplit

from processors.fetch_child import DOWNLOAD_FAILED, DOWNLOAD_TOO_LARGE, DOWNLOAD_UNAVAILABLE, limit_text
from processors.media_fetch import DOWNLOAD_TIMEOUT
from schemas.errors import JobFailed, JobRetryable
from schemas.url_guard import UrlRefused, check_address, check_syntax

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
RETRY_DELAY_S = 5.0
USER_AGENT = "gpubus-web/0.1"


@dataclass(frozen=True)
class WebFetchLimits:
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 30.0  # the whole fetch, redirects included
    max_redirects: int = 5
    allow_private: bool = False


@dataclass(frozen=True)
class FetchedPage:
    url: str  # after redirects
    content_type: str
    body: bytes


def _refused(e: UrlRefused) -> JobFailed:
    return JobFailed(e.code, e.message)


def resolve_checked(host: str, port: int, *, allow_private: bool) -> str:
    """An address of `host` a node may connect to; every address it has is checked."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise JobFailed(DOWNLOAD_FAILED, f"{host}: no such host ({e.strerror})") from e
    addresses = [str(info[4][0]).split("%", 1)[0] for info in infos]
    try:
        for ip in addresses:
            check_address(host, ip, allow_private=allow_private)
    except UrlRefused as e:
        raise _refused(e) from None
    return addresses[0]


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def expired(self) -> JobFailed:
        return JobFailed(DOWNLOAD_TIMEOUT, f"the page took longer than {self.timeout_s:.0f}s to fetch")

    def left(self) -> float:
        """Seconds left, the time-out of the next socket wait; raises once none are."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise self.expired()
        return remaining


def _connection(url: str, limits: WebFetchLimits, deadline: _Deadline) -> http.client.HTTPConnection:
    """A connection to the checked address, with TLS verified against the host name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip = resolve_checked(host, port, allow_private=limits.allow_private)
    sock = socket.create_connection((ip, port), timeout=deadline.left())
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPSConnection(host, port, timeout=deadline.left())  # its default port in Host
    else:
        conn = http.client.HTTPConnection(host, port, timeout=deadline.left())
    conn.sock = sock  # already connected to the checked address: http.client will not resolve again
    return conn


def _status_error(status: int, url: str) -> JobFailed | JobRetryable:
    """Overload and server errors may pass; any other status will repeat."""
    if status >= 500 or status == 429:
        return JobRetryable(DOWNLOAD_UNAVAILABLE, f"{url}: HTTP {status}", delay_s=RETRY_DELAY_S)
    return JobFailed(DOWNLOAD_FAILED, f"{url}: HTTP {status}")


def _read_capped(
    response: http.client.HTTPResponse, sock: socket.socket, limits: WebFetchLimits, deadline: _Deadline
) -> bytes:
    """The body, counted as it arrives: a missing or lying Content-Length
    cannot take more than the cap, nor a slow drip more than the deadline."""
    declared = response.getheader("Content-Length")
    too_large = JobFailed(DOWNLOAD_TOO_LARGE, f"the page is over the limit of {limit_text(limits.max_bytes)}")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    while True:
        sock.settimeout(deadline.left())
        chunk = response.read1(CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limits.max_bytes:
            raise too_large
        chunks.append(chunk)


def _cookie_header(cookies: CookieJar | None, url: str) -> dict[str, str]:
    """The owner's cookies for this URL (domain, path, secure and expiry
    rules are the jar's), checked again on every redirect."""
    if cookies is None:
        return {}
    request = urllib.request.Request(url)
    cookies.add_cookie_header(request)
    value = request.get_header("Cookie")
    return {"Cookie": value} if value else {}


def _get_once(
    url: str, limits: WebFetchLimits, deadline: _Deadline, cookies: CookieJar | None = None
) -> tuple[str | None, str, bytes]:
    """(Location, Content-Type, body): one request, no redirect followed."""
    conn = _connection(url, limits, deadline)
    sock = conn.sock  # http.client drops conn.sock on "Connection: close"; the response still reads it
    assert sock is not None
    try:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": USER_AGENT, "Accept": "text/html,*/*;q=0.5"} | _cookie_header(cookies, url)
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        if response.status in REDIRECT_STATUSES:
            return response.getheader("Location") or "", "", b""
        if response.status != 200:
            raise _status_error(response.status, url)
        body = _read_capped(response, sock, limits, deadline)
        return None, response.getheader("Content-Type") or "", body
    finally:
        conn.close()


def fetch_page(url: str, limits: WebFetchLimits, cookies: CookieJar | None = None) -> FetchedPage:
    """Raises JobFailed (URL_REFUSED, DOWNLOAD_FAILED, DOWNLOAD_TOO_LARGE,
    DOWNLOAD_TIMEOUT) or JobRetryable (DOWNLOAD_UNAVAILABLE)."""
    deadline = _Deadline(limits.timeout_s)
    for _hop in range(limits.max_redirects + 1):
        try:
            url = check_syntax(url)
        except UrlRefused as e:
            raise _refused(e) from None
        try:
            location, content_type, body = _get_once(url, limits, deadline, cookies)
        except TimeoutError as e:  # every socket wait is bounded by what is left of the deadline
            raise deadline.expired() from e
        except ssl.SSLCertVerificationError as e:
            raise JobFailed(DOWNLOAD_FAILED, f"{url}: the TLS certificate does not verify ({e.verify_message})") from e
        except (OSError, http.client.HTTPException) as e:  # refused, reset, unreachable: may pass
            raise JobRetryable(DOWNLOAD_UNAVAILABLE, f"{url}: {type(e).__name__}: {e}", delay_s=RETRY_DELAY_S) from e
        if location is None:
            return FetchedPage(url=url, content_type=content_type, body=body)
        url = urljoin(url, location)
    raise JobFailed(DOWNLOAD_FAILED, f"more than {limits.max_redirects} redirects")
