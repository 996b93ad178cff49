"""Downloads for URL jobs, through the real yt-dlp child process, against a
real HTTP server on 127.0.0.1: cookies, SSRF refusals, size and time limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.media_fetch import DOWNLOAD_TIMEOUT, FetchConfig, fetch
from schemas.errors import JobCancelled, JobFailed, JobRetryable
from schemas.url_guard import URL_REFUSED_CODE
from tests.harness import TESTDATA
from tests.media_server import MediaServer

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
COOKIE_FILE = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\ts3cr3t-value\n"


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    srv = MediaServer(TESTDATA).start()
    yield srv
    srv.stop()


def get(url: str, tmp_path: Path, *, allow_private=True, max_bytes=50 * MiB, timeout_s=60.0, cookies=None, cancel=None):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return fetch(
        url,
        out,
        FetchConfig(max_bytes=max_bytes, timeout_s=timeout_s, allow_private=allow_private),
        cookiefile=cookies,
        on_progress=lambda n: None,
        cancelled=cancel or threading.Event(),
    )


def failure(tmp_path: Path, url: str, **kw) -> JobFailed:
    with pytest.raises(JobFailed) as e:
        get(url, tmp_path, **kw)
    return e.value


def test_downloads_the_media_with_the_owners_cookie(server, tmp_path):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(COOKIE_FILE)
    got = get(server.url("hello.mp4"), tmp_path, cookies=cookies)
    assert got.path.read_bytes() == (TESTDATA / "hello.mp4").read_bytes()
    assert got.title == "hello" and got.extractor == "Generic"
    assert server.cookies_for("hello.mp4") and set(server.cookies_for("hello.mp4")) == {"session=s3cr3t-value"}


def test_private_address_is_refused_before_any_request(server, tmp_path):
    before = len(server.requests)
    err = failure(tmp_path, server.url("numbers.wav"), allow_private=False)
    assert err.code == URL_REFUSED_CODE and "loopback" in err.message
    assert len(server.requests) == before  # the guard refused the lookup: nothing was sent


def test_a_name_resolving_to_loopback_is_refused(server, tmp_path):
    err = failure(tmp_path, server.url("numbers.wav").replace("127.0.0.1", "localhost"), allow_private=False)
    assert err.code == URL_REFUSED_CODE


def test_redirect_to_cloud_metadata_is_refused_even_with_private_urls_allowed(server, tmp_path):
    err = failure(tmp_path, server.url("to-metadata"), allow_private=True)
    assert err.code == URL_REFUSED_CODE and "169.254.169.254" in err.message and "metadata" in err.message
    assert "/to-metadata" in [r.path for r in server.requests]


def test_over_the_size_limit_by_content_length(server, tmp_path):
    err = failure(tmp_path, server.url("long.wav"), max_bytes=MiB)
    assert err.code == "DOWNLOAD_TOO_LARGE"


def test_over_the_size_limit_while_streaming_without_length(server, tmp_path):
    err = failure(tmp_path, server.url("stream/long.wav"), max_bytes=MiB)
    assert err.code == "DOWNLOAD_TOO_LARGE" and "1.0 MiB" in err.message


def test_time_limit_kills_a_stalled_download(server, tmp_path):
    t0 = time.monotonic()
    err = failure(tmp_path, server.url("drip.wav"), timeout_s=4)
    assert err.code == DOWNLOAD_TIMEOUT
    assert time.monotonic() - t0 < 30


def test_cancel_stops_the_download(server, tmp_path):
    cancel = threading.Event()
    threading.Timer(2.0, cancel.set).start()
    with pytest.raises(JobCancelled):
        get(server.url("drip.wav"), tmp_path, cancel=cancel)


def test_missing_page_is_a_permanent_failure(server, tmp_path):
    err = failure(tmp_path, server.url("nothing-here.wav"))
    assert err.code == "DOWNLOAD_FAILED" and "404" in err.message


@pytest.mark.parametrize("path", ["to-file", "to-ftp"])
def test_redirect_to_another_scheme_is_a_permanent_failure(server, tmp_path, path):
    # Given a page that redirects to file:// or ftp://, when a node fetches it
    err = failure(tmp_path, server.url(path), allow_private=True)
    # Then the child reports a permanent failure (not a crash, retried as transient)
    assert err.code == "DOWNLOAD_FAILED" and not isinstance(err, JobRetryable)
    assert f"/{path}" in [r.path for r in server.requests]
