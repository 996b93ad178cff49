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
Admin = Annotated[Principal, Depends(auth.admin)]  # the admin token
Anyone = Annotated[Principal, Depends(auth.authenticate)]  # any valid credential
