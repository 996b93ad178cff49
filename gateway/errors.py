"""Errors to HTTP, in one place: every error body is
`{"error": {"code": ..., "message": ...}}` and never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bus.retry import is_transient
from schemas import errors as e

log = logging.getLogger("gpubus.gateway.errors")

STATUS: list[tuple[type[e.GpubusError], int]] = [
    (e.InvalidInput, 422),
    (e.Unauthorized, 401),
    (e.Forbidden, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.PayloadTooLarge, 413),
    (e.UnsupportedMedia, 415),
    (e.RateLimited, 429),
    (e.Unavailable, 503),
    (e.StillRunning, 504),  # synchronous endpoints: the job goes on
    (e.JobFailed, 422),  # synchronous endpoints: the job's own error code (DECODE_FAILED, ...)
]

CLIENT_CLOSED = 499  # nginx's code: nobody reads it, the logs and metrics do
HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


def status_of(err: e.GpubusError) -> int:
    for cls, status in STATUS:
        if isinstance(err, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.GpubusError)
    async def _gpubus(_: Request, err: e.GpubusError) -> JSONResponse:
        status = status_of(err)
        headers = {}
        if isinstance(err, e.Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        retry_after = getattr(err, "retry_after_s", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if status >= 500:
            log.error("%s: %s", err.code, err.message)
        return error_response(status, err.code, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, e.InvalidInput.code, f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, HTTP_CODES.get(err.status_code, "HTTP_ERROR"), str(err.detail))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        """The client went away mid-request (say, mid-upload): its own
        doing, not a gateway fault, so one quiet line, not an ERROR with a
        stack trace. Whatever it had staged is purged on the way out."""
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(CLIENT_CLOSED, "CLIENT_CLOSED", "the client closed the connection")

    @app.exception_handler(NatsError)
    async def _nats(request: Request, err: NatsError) -> JSONResponse:
        """NATS errors get a handler of their own, not just the catch-all
        below: Starlette answers a catch-all error from its outermost
        middleware and re-raises it, and uvicorn then drops the connection,
        so a keep-alive client still sending an upload got a connection
        reset instead of the 503 (1 in 10 in a test, and in the cluster
        fault test); a handled error is answered normally."""
        return await _unexpected(request, err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        if is_transient(err):  # NATS restarting or electing a leader
            log.warning("NATS unavailable: %r", err)
            return error_response(
                503, e.Unavailable.code, "the bus is unavailable; retry shortly", {"Retry-After": "2"}
            )
        log.exception("unhandled error")
        return error_response(500, "INTERNAL", "internal error; see the gateway log")
