"""Who is calling: an API key, the admin token, or (only if allowed)
anonymous. A key that is present but wrong is always 401."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from gateway.state import GatewayState
from schemas.errors import Forbidden, Unauthorized
from schemas.keys import KEY_PREFIX, Role
from schemas.names import ANONYMOUS, Priority


@dataclass(frozen=True)
class Principal:
    user_id: str
    roles: frozenset[Role]
    admin: bool = False
    key_id: str | None = None
    max_upload_mb: int | None = None  # this key's own limits, else the gateway's
    max_active_jobs: int | None = None
    max_priority: Priority | None = None  # the highest priority this key may ask for; None: any


ADMIN = Principal(user_id="admin", roles=frozenset(Role), admin=True)


def state_of(request: Request) -> GatewayState:
    return request.app.state.gateway


def presented_secret(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use `Authorization: Bearer <API key>`")
        return token.strip()
    return request.headers.get("x-api-key") or None


async def authenticate(request: Request) -> Principal:
    st = state_of(request)
    secret = presented_secret(request)
    if secret is None:
        if st.settings.allow_anonymous:
            return Principal(user_id=ANONYMOUS, roles=frozenset({Role.USER}))
        raise Unauthorized("an API key is required (Authorization: Bearer gpb_...)")
    admin = st.settings.admin_token
    if admin is not None and not secret.startswith(KEY_PREFIX):
        if hmac.compare_digest(secret.encode(), admin.get_secret_value().encode()):
            return ADMIN
        raise Unauthorized("invalid token")
    rec = await st.keys.authenticate(secret)
    return Principal(
        user_id=rec.user_id,
        roles=frozenset(rec.roles),
        key_id=rec.key_id,
        max_upload_mb=rec.max_upload_mb,
        max_active_jobs=rec.max_active_jobs,
        max_priority=rec.max_priority,
    )


async def user(request: Request) -> Principal:
    p = await authenticate(request)
    if p.admin:
        raise Forbidden("the admin token manages keys; submit jobs with a user key")
    if Role.USER not in p.roles:
        raise Forbidden("this key has no `user` role")
    return p


async def admin(request: Request) -> Principal:
    p = await authenticate(request)
    if not p.admin:
        raise Forbidden("admin token required")
    return p
