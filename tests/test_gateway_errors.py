"""A NATS failure during a request is a clean 503 + Retry-After on a
keep-alive connection, even when the client is still sending an upload.

The failure is the real nats-py exception a KV read raises while a stream
has no leader (what tests/test_cluster.py provokes with kill -9), raised
where the gateway's auth dependency reads the key; the app is the real
error mapping served by uvicorn on a loopback port."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from nats.errors import TimeoutError as NatsTimeoutError

from gateway import errors
from ops.embedded_nats import free_port

pytestmark = pytest.mark.timeout(60)

UPLOAD = b"\0" * 366_000  # hello.wav's size: the body is still arriving when the error is answered


def _leaderless_kv() -> None:
    raise NatsTimeoutError()


def test_nats_failure_mid_upload_is_a_503_not_a_reset_connection():
    # Given the gateway's error mapping and an endpoint whose auth step hits a leaderless KV
    app = FastAPI()
    errors.install(app)

    @app.post("/api/v1/jobs")
    async def submit(_: None = Depends(_leaderless_kv)) -> dict:
        return {}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        # When one keep-alive client uploads again and again
        answers: Counter = Counter()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for _ in range(60):
                try:
                    r = c.post("/api/v1/jobs", files={"file": ("hello.wav", UPLOAD)})
                    answers[(r.status_code, r.headers.get("retry-after"), r.json()["error"]["code"])] += 1
                except httpx.TransportError as e:
                    answers[type(e).__name__] += 1
        # Then every answer is a 503 with Retry-After, none a dropped connection
        assert answers == Counter({(503, "2", "UNAVAILABLE"): 60}), answers
    finally:
        server.should_exit = True
        thread.join(10)
