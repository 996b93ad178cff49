"""Web pages: boilerplate-free text and metadata from HTML, fetched from a
real HTTP server on 127.0.0.1 under the SSRF rules, a size cap and a deadline."""

from __future__ import annotations

import functools
import http.server
import socket
import ssl
import threading
import time

import pytest

from processors.fetch_child import DOWNLOAD_FAILED, DOWNLOAD_TOO_LARGE, DOWNLOAD_UNAVAILABLE
from processors.media_fetch import DOWNLOAD_TIMEOUT
from processors.web_fetch import WebFetchLimits, fetch_page
from processors.web_page import ENGINE, extract, read_web_page
from schemas.document_errors import UNSUPPORTED_DOCUMENT
from schemas.errors import JobFailed, JobRetryable
from schemas.url_guard import URL_REFUSED_CODE
from tests.media_server import MediaServer

pytestmark = pytest.mark.timeout(30)

ARTICLE = """<!doctype html><html lang="en"><head><title>Moths at Night</title>
<meta name="author" content="Ada Lovelace"><meta property="article:published_time" content="2024-05-03"></head>
<body><nav><a href="/">Home</a> <a href="/about">About us</a></nav>
<article><h1>Moths at Night</h1>
<p>Moths navigate by the moon and are drawn to lamps for reasons scientists still debate at length.</p>
<h2>Why lamps</h2>
<p>One theory says moths keep a fixed angle to a light source, which works for the distant moon but spirals
them into a porch lamp. See <a href="https://example.org/study">the study</a> for the experiment.</p>
<p>Another theory involves thermal radiation and is less popular among entomologists who study
<a href="/moths">moths</a> for a living.</p></article>
<footer>Copyright 2024. Cookie policy. Subscribe to our newsletter.</footer></body></html>"""
LOCAL = WebFetchLimits(allow_private=True, timeout_s=5)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "article.html").write_text(ARTICLE)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(ARTICLE)
    (tmp_path / "big.html").write_text("<p>" + "x" * 300_000 + "</p>")
    (tmp_path / "notes.txt").write_text("plain words")
    srv = MediaServer(tmp_path).start()
    yield srv
    srv.stop()


def _fails(url: str, limits: WebFetchLimits) -> JobFailed | JobRetryable:
    with pytest.raises((JobFailed, JobRetryable)) as caught:
        read_web_page(url, limits)
    return caught.value


def _assert_is_the_article(result):
    assert result.title == "Moths at Night" and result.author == "Ada Lovelace"
    assert result.date == "2024-05-03" and result.language == "en" and result.engine == ENGINE
    assert result.links_count == 2  # the article's two links, not the menu's
    assert "navigate by the moon" in result.text and "[the study]" not in result.text
    assert "## Why lamps" in result.markdown and "[the study](https://example.org/study)" in result.markdown
    for boilerplate in ("About us", "Cookie policy", "newsletter"):
        assert boilerplate not in result.text


def test_extract_keeps_the_article_and_drops_the_boilerplate():
    _assert_is_the_article(extract(ARTICLE.encode(), "https://moths.example/night"))


def test_page_fetched_from_a_local_server_through_a_redirect(server):
    # Given a directory URL the server redirects to its slash form
    # When it is read with private addresses allowed (a node on its own LAN)
    result = read_web_page(server.url("site"), LOCAL)
    # Then the redirect was followed and checked, and the result names the final URL
    assert result.url == server.url("site/")
    _assert_is_the_article(result)


def test_loopback_is_refused_by_default_without_a_request(server):
    for url in (server.url("article.html"), server.url("article.html").replace("127.0.0.1", "localhost")):
        assert _fails(url, WebFetchLimits()).code == URL_REFUSED_CODE
    assert server.requests == []


@pytest.mark.parametrize("path", ["to-metadata", "to-file", "to-ftp"])
def test_every_redirect_is_checked(server, path):
    # Even with private addresses allowed, metadata endpoints and other schemes stay closed
    assert _fails(server.url(path), LOCAL).code == URL_REFUSED_CODE


def test_redirect_limit(server):
    error = _fails(server.url("site"), WebFetchLimits(allow_private=True, max_redirects=0))
    assert error.code == DOWNLOAD_FAILED and "redirects" in error.message


def test_size_cap_with_and_without_content_length(server):
    small = WebFetchLimits(allow_private=True, max_bytes=100_000)
    assert _fails(server.url("big.html"), small).code == DOWNLOAD_TOO_LARGE
    assert _fails(server.url("stream/big.html"), small).code == DOWNLOAD_TOO_LARGE


def test_a_page_that_drips_forever_times_out(server):
    t0 = time.monotonic()
    error = _fails(server.url("drip.wav"), WebFetchLimits(allow_private=True, timeout_s=1.5))
    assert error.code == DOWNLOAD_TIMEOUT and time.monotonic() - t0 < 3


def test_http_errors_non_html_and_connection_refused(server):
    missing = _fails(server.url("nope.html"), LOCAL)
    assert isinstance(missing, JobFailed) and missing.code == DOWNLOAD_FAILED
    assert _fails(server.url("notes.txt"), LOCAL).code == UNSUPPORTED_DOCUMENT
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JobRetryable) as caught:
        fetch_page(f"http://127.0.0.1:{port}/", LOCAL)
    assert caught.value.code == DOWNLOAD_UNAVAILABLE


@pytest.fixture
def tls_server(tmp_path):
    """HTTPS on 127.0.0.1 with a certificate from a CA made here (ops/tls.py)."""
    from ops import tls

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "article.html").write_text(ARTICLE)
    ca_file, ca_key = tls.create_ca(tmp_path / "ca")
    files = tls.issue_server_cert(ca_file, ca_key, tmp_path / "server", ["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "www"))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://localhost:{srv.server_address[1]}/article.html", ca_file
    srv.shutdown()
    srv.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_https_is_verified_against_the_host_name(tls_server, monkeypatch):
    url, ca_file = tls_server
    # Given a server whose CA this machine does not trust: Then the fetch fails for good
    untrusted = _fails(url, LOCAL)
    assert isinstance(untrusted, JobFailed) and untrusted.code == DOWNLOAD_FAILED and "certificate" in untrusted.message
    # Given the CA trusted (OpenSSL's SSL_CERT_FILE): Then the page is read over TLS to the checked address
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    _assert_is_the_article(read_web_page(url, LOCAL))
