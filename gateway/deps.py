"""The FastAPI dependencies every router takes: who calls, and the
gateway's state. One definition each, so a route's signature says what it
needs (`st: State, principal: User`) and nothing reads `request.app` itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from gateway import auth
from gateway.auth import Principal
from gateway.state import GatewayState

State = Annotated[GatewayState, Depends(auth.state_of)]
User = Annotated[Principal, Depends(auth.user)]  # a key with the `user` role (never the admin token)
UrlUser = Annotated[Principal, Depends(auth.url_user)]  # the same, the key also as `?api_key=` (compat routes only)
Admin = Annotated[Principal, Depends(auth.admin)]  # the admin token
Anyone = Annotated[Principal, Depends(auth.authenticate)]  # any valid credential
