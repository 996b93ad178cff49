"""Request bodies that are not uploads: capped before anything reads them.

FastAPI reads a declared body parameter before it resolves dependencies, so
a JSON endpoint buffered a whole body before the caller was authenticated
(300 MB with no key raised the gateway's RSS by 580 MB). Two layers:

- `BodyLimit`, one ASGI middleware in front of every route, refuses a
  non-multipart body over its cap with 413: at once by Content-Length, or by
  counting bytes as a chunked body arrives. It holds at most the cap in
  memory, and the app sees the body only once it is known to fit.
- `json_body` reads a JSON endpoint's body raw, with the same cap, after
  auth, and validates it with the endpoint's model.

Multipart bodies pass through: the upload endpoints stream them into the
object store after auth, with their own per-key limits (gateway/uploads.py).
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_response
from schemas.cookies import MAX_COOKIE_FILE_BYTES
from schemas.errors import InvalidInput, PayloadTooLarge

JSON_BODY_MAX_BYTES = 64 * 1024
# The largest non-multipart, non-JSON body an endpoint takes: a cookie file.
OTHER_BODY_MAX_BYTES = MAX_COOKIE_FILE_BYTES
M = TypeVar("M", bound=BaseModel)


def body_cap(content_type: str) -> int | None:
    """The most bytes a body of this type may have; None = not capped here."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype.startswith("multipart/"):
        return None
    if ctype == "application/json" or ctype.endswith("+json"):
        return JSON_BODY_MAX_BYTES
    return OTHER_BODY_MAX_BYTES


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


def _too_large(cap: int, what: str = "the request body") -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is over {cap // 1024} KiB")


class BodyLimit:
    """Refuse a non-multipart body over its cap (413) before the app runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = body_cap(_header(scope, b"content-type")) if scope["type"] == "http" else None
        if cap is None:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > cap:
            await self._refuse(scope, receive, send, cap)
            return
        try:
            buffered = await self._read(receive, cap)
        except PayloadTooLarge:
            await self._refuse(scope, receive, send, cap)
            return
        await self.app(scope, self._replay(buffered, receive), send)

    @staticmethod
    async def _read(receive: Receive, cap: int) -> list[Message]:
        """The body's messages, up to `cap` bytes (a disconnect ends it early)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > cap:
                raise _too_large(cap)
            if not message.get("more_body", False):
                return messages

    @staticmethod
    def _replay(buffered: list[Message], receive: Receive) -> Receive:
        """What was read first, then the connection's own messages (a
        streaming response listens there for the client going away)."""

        async def replayed() -> Message:
            return buffered.pop(0) if buffered else await receive()

        return replayed

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        err = _too_large(cap)
        # Connection: close: the rest of the body is never read, so the
        # connection cannot carry another request.
        response = error_response(413, err.code, err.message, {"Connection": "close"}, path=scope.get("path", ""))
        await response(scope, receive, send)


async def read_capped(request: Request, cap: int = JSON_BODY_MAX_BYTES, what: str = "the request body") -> bytes:
    """The body, refused (413) as soon as it passes `cap` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(cap, what)
    return bytes(body)


def validation_message(e: ValidationError, *where: str) -> str:
    """The first error as `field.path: what is wrong`; a model-level check
    (speaker counts that disagree) is named by `where` alone."""
    first = e.errors()[0]
    return f"{'.'.join(map(str, (*where, *first['loc'])))}: {first['msg'].removeprefix('Value error, ')}"


def parse_json(model: type[M], raw: bytes) -> M:
    """`raw` validated as `model`; a bad body is a 422 naming the field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidInput(validation_message(e)) from e


async def json_body(request: Request, model: type[M]) -> M:
    """A JSON endpoint's body: read after auth, capped, then validated."""
    return parse_json(model, await read_capped(request))
