"""URL jobs end to end: JSON submit → the node downloads with yt-dlp from a
real HTTP server on 127.0.0.1 (with the owner's cookie file) → transcript."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import TESTDATA, start_node, wait_job
from tests.media_server import MediaServer

pytestmark = pytest.mark.timeout(180)

COOKIE_VALUE = "c00kie-for-the-node-only"
COOKIES = f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tlogin\t{COOKIE_VALUE}\n"


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    srv = MediaServer(TESTDATA).start()
    yield srv
    srv.stop()


def test_url_job_downloads_with_the_owners_cookie_and_transcribes(gateway, server, user):
    # Given a user with a GPU node allowed to fetch from the LAN, and a cookie file
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}", allow_private_urls="true")
    try:
        with gateway.client(key) as c:
            r = c.put("/api/v1/auth/cookies", content=COOKIES.encode(), headers={"Content-Type": "text/plain"})
            assert r.status_code == 200 and r.json() == {"stored": True, "cookies": 1, "size": len(COOKIES)}
            got = c.get("/api/v1/auth/cookies").json()
            assert got["present"] is True and COOKIE_VALUE not in str(got)
            # When they submit a URL of a video
            r = c.post(
                "/api/v1/jobs", json={"url": server.url("hello.mp4"), "gpu": True, "options": {"word_timestamps": True}}
            )
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["lane"] == "gpu"
            final = wait_job(c, job["job_id"], timeout_s=120)
            # Then the node downloaded it with the cookie and transcribed it
            assert final["status"] == "succeeded", final
            assert final["kind"] == "url" and final["url"] == server.url("hello.mp4")
            assert server.cookies_for("hello.mp4") and set(server.cookies_for("hello.mp4")) == {f"login={COOKIE_VALUE}"}
            result = c.get(f"/api/v1/jobs/{job['job_id']}/result").json()
            assert "weather" in result["text"].lower()
            assert result["source_url"] == server.url("hello.mp4") and result["title"] == "hello"
            assert result["segments"][0]["words"]
            # And the cookie never reached a log
            assert COOKIE_VALUE not in node.log() and COOKIE_VALUE not in gateway.proc.log()
            assert c.delete("/api/v1/auth/cookies").json() == {"present": False}
            assert c.get("/api/v1/auth/cookies").json() == {"present": False}
    finally:
        node.stop()


def test_private_url_is_refused_by_a_node_without_the_flag(gateway, shared_cpu_node, server, user):
    # Given the shared CPU node (GPUBUS_ALLOW_PRIVATE_URLS unset)
    key = gateway.create_key(user)
    before = len(server.requests)
    with gateway.client(key) as c:
        job = c.post("/api/v1/jobs", json={"url": server.url("numbers.wav")}).json()
        final = wait_job(c, job["job_id"], timeout_s=90)
    # Then the job fails with URL_REFUSED and the server never saw a request
    assert final["status"] == "failed" and final["error"]["code"] == "URL_REFUSED", final
    assert "loopback" in final["error"]["message"]
    assert len(server.requests) == before


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.wav",
        "not a url",
        "http://",
        "http://169.254.169.254/latest/",
        "http://[::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
    ],
)
def test_gateway_refuses_non_http_urls_at_submit(gateway, user, url):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        r = c.post("/api/v1/jobs", json={"url": url})
    assert r.status_code == 422 and r.json()["error"]["code"] == "URL_REFUSED", r.text
    with gateway.client(key) as c:
        assert c.get("/api/v1/jobs").json()["jobs"] == []


def test_cookie_upload_must_be_a_netscape_cookie_file(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        r = c.put("/api/v1/auth/cookies", content=b"session=abc; other=def")
        assert r.status_code == 422 and "Netscape" in r.json()["error"]["message"]
        assert "abc" not in r.text
        assert c.get("/api/v1/auth/cookies").json() == {"present": False}
    with gateway.client(None) as anon:
        assert anon.put("/api/v1/auth/cookies", content=COOKIES.encode()).status_code == 401
