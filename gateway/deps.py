"""The FastAPI dependencies every router takes: who calls, and the
gateway's state. One definition each, so a route's signature says what it
needs (`st: State, principal: User`) and nothing reads `request.app` itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway import auth
from gateway.auth import Principal
from gateway.state import GatewayState


async def _state(request: Request) -> GatewayState:
    """`async` on purpose: FastAPI runs a plain `def` dependency on its
    thread pool, so every request paid a hop to a worker thread and back
    (and the GIL hand-offs) to read one attribute."""
    return auth.state_of(request)


State = Annotated[GatewayState, Depends(_state)]
User = Annotated[Principal, Depends(auth.user)]  # a key with the `user` role (never the admin token)
UrlUser = Annotated[Principal, Depends(auth.url_user)]  # the same, the key also as `?api_key=` (compat routes only)
Admin = Annotated[Principal, Depends(auth.admin)]  # the admin token
Anyone = Annotated[Principal, Depends(auth.authenticate)]  # any valid credential
