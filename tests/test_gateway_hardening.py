"""The gateway findings of the 2026-12-01 security review (F3, F8-F13, F15,
F16, F19), each reproduced against a real gateway on a real nats-server."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from bench.common import RssSampler

pytestmark = pytest.mark.timeout(120)


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and err["message"], err
    if code:
        assert err["code"] == code, err
    return err


# -- F3: no body is buffered before authentication --------------------------


def post_big_body(port: int, path: str, total: int, *, chunked: bool, key: str | None = None) -> int | None:
    """POST `total` bytes of JSON-ish junk, as a client that keeps sending
    while it waits; the status line it got, or None if the connection was
    cut before any answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    piece = b"a" * 65536
    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece

    def pump() -> None:
        try:
            for _ in range(total // len(piece)):
                sock.sendall(frame)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the gateway stopped listening: what it should do
            pass

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    try:
        head = sock.recv(4096)
    except OSError:
        head = b""
    sender.join(60)
    sock.close()
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "path, with_key",
    [("/api/v1/auth/keys", False), ("/api/v1/nodes/bootstrap", False), ("/api/v1/jobs", True), ("/process/url", True)],
)
def test_big_json_body_is_refused_unbuffered(gateway, user, path, with_key, chunked):
    # Given the gateway, warmed up on the same route (no key, or a user's key)
    key = gateway.create_key(user) if with_key else None
    assert post_big_body(gateway.port, path, 65536, chunked=chunked, key=key) in (401, 413, 422)
    # When 64 MB arrive
    with RssSampler({"gateway": gateway.proc.pid}, interval_s=0.01) as rss:
        status = post_big_body(gateway.port, path, 64 * 2**20, chunked=chunked, key=key)
    # Then it is refused, and never held in memory
    growth = rss.growth_mb("gateway")
    print(f"{path} key={with_key} chunked={chunked}: {status}, RSS +{growth:.1f} MB")
    assert status in (413, 401), status
    assert growth < 8, f"gateway RSS grew {growth:.1f} MB"


def test_refused_body_has_the_json_error_shape_and_small_json_still_works(gateway, user):
    with gateway.admin() as admin:
        _error(admin.post("/api/v1/auth/keys", content=b'{"user_id": "' + b"a" * 70_000 + b'"}',
                          headers={"Content-Type": "application/json"}), 413, "PAYLOAD_TOO_LARGE")
        key = admin.post("/api/v1/auth/keys", json={"user_id": user, "roles": ["user"]})
        assert key.status_code == 201, key.text
    with gateway.client(key.json()["api_key"]) as c:
        _error(c.post("/process/url", json={"url": "https://example.com/a.mp3", "initial_prompt": "x" * 70_000}),
               413, "PAYLOAD_TOO_LARGE")
        _error(c.post("/api/v1/ingest/url", json={"url": "https://example.com/" + "a" * 70_000}), 413)
    with gateway.client(None) as anon:  # and no key is still a 401, never anonymous
        _error(anon.post("/api/v1/jobs", json={"url": "https://example.com/a.mp3"}), 401, "UNAUTHORIZED")
