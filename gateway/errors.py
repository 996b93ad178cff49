"""Errors to HTTP, in one place: every error body is
`{"error": {"code": ..., "message": ...}}` and never a stack trace.

Under `/v1/` (the OpenAI-compatible API) bodies and statuses are OpenAI's,
so its clients raise the same typed exceptions as against OpenAI:
`{"error": {"message", "type", "param", "code"}}`, a refused request or file
400 (BadRequestError), a model no live node serves 404 `model_not_found`
(NotFoundError), a bad key 401 `invalid_api_key` (AuthenticationError).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bus.retry import is_transient
from gateway.job_views import result_url, status_url
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
    (e.IdempotencyKeyReused, 422),  # the IETF idempotency draft's status for a key reused with another body
    # Synchronous endpoints: the job goes on. A status no client retries by
    # itself (the official OpenAI clients retry 408, 409, 429 and 5xx, and a
    # retry would be a second job), plus `x-should-retry: false`.
    (e.StillRunning, 423),
    (e.JobFailed, 422),  # synchronous endpoints: the job's own error code (DECODE_FAILED, ...)
]

OPENAI_PREFIX = "/v1/"
# Where OpenAI's statuses differ from gpubus': first match wins.
OPENAI_STATUS: list[tuple[type[e.GpubusError], int]] = [
    (e.ModelNotServed, 404),
    (e.InvalidInput, 400),
    (e.UnsupportedMedia, 400),
    (e.JobFailed, 400),  # the file did not decode: OpenAI's "Invalid file format", a 400
]
# OpenAI's codes where it has its own (elsewhere gpubus' stable codes stay).
OPENAI_CODES: list[tuple[type[e.GpubusError], str]] = [
    (e.ModelNotServed, "model_not_found"),
    (e.Unauthorized, "invalid_api_key"),
    (e.RateLimited, "rate_limit_exceeded"),
]
FILE_ERRORS = (e.UnsupportedMedia, e.JobFailed, e.PayloadTooLarge)
# Refusals name their field first ("response_format: one of ..."; gateway/form_fields.py).
FIELD_PREFIX = re.compile(r"^(?:options\.)?([A-Za-z_][A-Za-z0-9_]*(?:\[\])?):")

CLIENT_CLOSED = 499  # nginx's code: nobody reads it, the logs and metrics do
HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def status_of(err: e.GpubusError, path: str = "") -> int:
    for cls, status in (OPENAI_STATUS + STATUS) if is_openai(path) else STATUS:
        if isinstance(err, cls):
            return status
    return 500


def openai_type(status: int) -> str:
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    path: str = "",
    param: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The one error body: gpubus' shape, or OpenAI's under /v1/ (`param`
    defaults to the field a message names first)."""
    if is_openai(path):
        if param is None and (m := FIELD_PREFIX.match(message)):
            param = m.group(1)
        body = {"message": message, "type": openai_type(status), "param": param, "code": code}
    else:
        body = {"code": code, "message": message}
    return JSONResponse({"error": body | (extra or {})}, status_code=status, headers=headers)


def _answer(path: str, err: e.GpubusError) -> JSONResponse:
    status = status_of(err, path)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(err, e.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(err, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(err, e.StillRunning):
        headers |= {"x-should-retry": "false", "X-Gpubus-Job-Id": err.job_id}
        extra = {"job_id": err.job_id, "status_url": status_url(err.job_id), "result_url": result_url(err.job_id)}
    if status >= 500:
        log.error("%s: %s", err.code, err.message)
    param = "file" if isinstance(err, FILE_ERRORS) else None
    code = err.code
    if is_openai(path):
        code = next((c for cls, c in OPENAI_CODES if isinstance(err, cls)), code)
    return error_response(status, code, err.message, headers, path=path, param=param, extra=extra)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.GpubusError)
    async def _gpubus(request: Request, err: e.GpubusError) -> JSONResponse:
        return _answer(request.url.path, err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        path = request.url.path
        status = 400 if is_openai(path) else 422
        param = loc[-1] if loc else None
        return error_response(
            status, e.InvalidInput.code, f"{'.'.join(loc)}: {first.get('msg')}", path=path, param=param
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(err.status_code, "HTTP_ERROR")
        return error_response(err.status_code, code, str(err.detail), path=request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        """The client went away mid-request (say, mid-upload): its own
        doing, not a gateway fault, so one quiet line, not an ERROR with a
        stack trace. Whatever it had staged is purged on the way out."""
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(CLIENT_CLOSED, "CLIENT_CLOSED", "the client closed the connection", path=request.url.path)

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
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        path = request.url.path
        if is_transient(err):  # NATS restarting or electing a leader
            log.warning("NATS unavailable: %r", err)
            return error_response(
                503, e.Unavailable.code, "the bus is unavailable; retry shortly", {"Retry-After": "2"}, path=path
            )
        log.exception("unhandled error")
        return error_response(500, "INTERNAL", "internal error; see the gateway log", path=path)
