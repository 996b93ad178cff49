"""A small HTTP client of the gateway, for the CLI (and scripts)."""

from __future__ import annotations

import json
import mimetypes
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx

from ops.sse import SseEvent, parse
from schemas.errors import GpubusError
from schemas.jobs import TERMINAL

GET_RETRY_FOR_S = 60.0


class ApiError(GpubusError):
    """The gateway answered with an error (its `{"error": {"code", "message"}}`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}", code=code)
        self.status = status
        self.detail = message


class GatewayUnreachable(GpubusError):
    """No answer from the gateway: connection refused, no such host, TLS not
    verified, or timed out. Nothing was accepted."""

    code = "UNREACHABLE"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes: httpx wraps httpcore, which wraps the
    OSError or ssl error that says what really happened."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def reason(exc: BaseException) -> str:
    """Why a connection failed, in words a user can act on."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS verification failed ({e.verify_message}); give its CA (GPUBUS_TLS_CA_FILE) or pin it"
        if isinstance(e, ssl.SSLError):
            return f"TLS failed ({e.reason or e})"
        if isinstance(e, socket.gaierror):
            return f"host name not resolved (DNS: {e.strerror})"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused (is the gateway running?)"
        if isinstance(e, (TimeoutError, httpx.TimeoutException)):
            return "timed out"
    return str(exc) or type(exc).__name__


def unreachable(url: str, exc: BaseException) -> GatewayUnreachable:
    return GatewayUnreachable(f"cannot reach the gateway at {url}: {reason(exc)}")


class _Http(httpx.Client):
    """Every request goes through `send`: the one place a transport failure
    becomes a typed `GatewayUnreachable` (scripts catch one class, the CLI
    maps it to one exit code)."""

    def send(self, request: httpx.Request, **kw: Any) -> httpx.Response:
        try:
            return super().send(request, **kw)
        except httpx.TransportError as e:
            raise unreachable(str(self.base_url).rstrip("/"), e) from e


class _CountingReader:
    """A file that reports how much of it was read (upload progress)."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._on_read(len(data))
        return data

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, *args: int) -> int:
        return self._f.seek(*args)

    def tell(self) -> int:
        return self._f.tell()


class GatewayClient:
    def __init__(
        self, base_url: str, token: str | None, *, timeout_s: float = 60.0, verify: ssl.SSLContext | None = None
    ) -> None:
        """`verify`: how HTTPS is checked (bus.tls.gateway_context); None = the system's trust store."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = _Http(base_url=base_url, headers=headers, timeout=timeout_s, verify=verify or True)

    def close(self) -> None:
        self.http.close()

    def _get(self, path: str, **kw: Any) -> httpx.Response:
        """GETs are safe to repeat: a 503 (NATS restarting or electing a
        leader) is retried after its Retry-After, for up to a minute."""
        deadline = time.monotonic() + GET_RETRY_FOR_S
        while True:
            r = self.http.get(path, **kw)
            if r.status_code != 503 or time.monotonic() > deadline:
                return r
            time.sleep(min(float(r.headers.get("Retry-After", "1") or 1), 5.0))

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ApiError(r.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(r.status_code, "HTTP_ERROR", r.text[:500]) from None
        return r

    def submit_file(
        self,
        path: Path,
        *,
        gpu: bool = False,
        kind: str | None = None,
        options: dict[str, Any] | None = None,
        on_read: Callable[[int], None] = lambda n: None,
    ) -> dict[str, Any]:
        data = {"gpu": "true" if gpu else "false"}
        if kind:
            data["kind"] = kind
        if options:
            data["options"] = json.dumps(options)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:
            reader = cast(BinaryIO, _CountingReader(f, on_read))  # httpx only reads it
            files = {"file": (path.name, reader, ctype)}
            return self._check(self.http.post("/api/v1/jobs", data=data, files=files)).json()

    def submit_json(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post("/api/v1/jobs", json=body)).json()

    def job(self, job_id: str, *, wait_s: float = 0.0) -> dict[str, Any]:
        """The job's record; with `wait_s`, once it is finished or after that long."""
        params = {"wait": round(wait_s, 3)} if wait_s > 0 else None
        return self._check(self._get(f"/api/v1/jobs/{job_id}", params=params)).json()

    def jobs(self, status: str | None = None, limit: int = 50) -> dict[str, Any]:
        """The listing as the gateway answers it: `jobs`, `total`, and
        `complete` (False: a listing by status left older jobs unread)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._check(self._get("/api/v1/jobs", params=params)).json()

    def result(self, job_id: str, fmt: str = "json") -> str:
        return self._check(self._get(f"/api/v1/jobs/{job_id}/result", params={"format": fmt})).text

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._check(self.http.post(path, json=body or {})).json()

    def get(self, path: str) -> dict[str, Any]:
        return self._check(self._get(path)).json()

    def delete(self, path: str) -> dict[str, Any]:
        return self._check(self.http.delete(path)).json()

    def events(self, job_id: str, *, timeout_s: float = 3600) -> Iterator[SseEvent]:
        """The job's Server-Sent Events until it is terminal (the gateway ends
        the stream there). Reads time out only if nothing, not even a ping,
        arrives for a minute."""
        timeout = httpx.Timeout(10.0, read=60.0)
        with self.http.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            yield from parse(r.iter_lines())

    def wait(
        self, job_id: str, *, timeout_s: float = 3600, on_update: Callable[[dict[str, Any]], None] = lambda j: None
    ) -> dict[str, Any]:
        """Long polls of a second each: the record at least every second for
        `on_update` (progress), and the end the moment it comes."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id, wait_s=max(0.0, min(1.0, deadline - time.monotonic())))
            on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
