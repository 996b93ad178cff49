"""Who is calling: an API key, the admin token, or (only if allowed)
anonymous. A key that is present but wrong is always 401."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Query, Request

from bus.retry import retrying
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
    webhook_url: str | None = None  # this key's default webhook (schemas/webhooks.py)
    has_webhook_secret: bool = False
    max_priority: Priority | None = None  # the highest priority this key may ask for; None: any


ADMIN = Principal(user_id="admin", roles=frozenset(Role), admin=True)


def state_of(request: Request) -> GatewayState:
    return request.app.state.gateway


QUERY_KEY = "api_key"  # only where `url_key=True`: gateway/asr_api.py


def presented_secret(request: Request, *, url_key: bool = False) -> str | None:
    """The bearer token or `x-api-key`; with `url_key`, else `?api_key=`
    (for clients that can only be given a URL: such a key ends up in
    proxies' access logs and shell histories, docs/SECURITY.md)."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use `Authorization: Bearer <API key>`")
        return token.strip()
    secret = request.headers.get("x-api-key") or None
    if secret is None and url_key:
        secret = request.query_params.get(QUERY_KEY) or None
    return secret


async def authenticate(request: Request, *, url_key: bool = False) -> Principal:
    st = state_of(request)
    secret = presented_secret(request, url_key=url_key)
    if secret is None:
        if st.settings.allow_anonymous:
            return Principal(user_id=ANONYMOUS, roles=frozenset({Role.USER}))
        raise Unauthorized("an API key is required (Authorization: Bearer gpb_...)")
    admin = st.settings.admin_token
    if admin is not None and not secret.startswith(KEY_PREFIX):
        if hmac.compare_digest(secret.encode(), admin.get_secret_value().encode()):
            return ADMIN
        raise Unauthorized("invalid token")
    # While NATS is away the key mirror cannot vouch that a key was not
    # revoked meanwhile, so the key is read from KV; that read rides out a
    # restart or an election like any other (a refusal is not retried).
    rec = await retrying(
        lambda: st.keys.authenticate(secret), what="authenticate", give_up_after_s=st.settings.publish_timeout
    )
    return Principal(
        user_id=rec.user_id,
        roles=frozenset(rec.roles),
        key_id=rec.key_id,
        max_upload_mb=rec.max_upload_mb,
        max_active_jobs=rec.max_active_jobs,
        webhook_url=rec.webhook_url,
        has_webhook_secret=rec.webhook_secret is not None,
        max_priority=rec.max_priority,
    )


def _as_user(p: Principal) -> Principal:
    if p.admin:
        raise Forbidden("the admin token manages keys; submit jobs with a user key")
    if Role.USER not in p.roles:
        raise Forbidden("this key has no `user` role")
    return p


async def user(request: Request) -> Principal:
    return _as_user(await authenticate(request))


async def url_user(
    request: Request,
    api_key: Annotated[
        str | None,
        Query(description="the API key, for clients that can only be given a URL (prefer the bearer header)"),
    ] = None,
) -> Principal:
    """`user`, with the key also taken from `?api_key=` (declared here so
    the OpenAPI document shows it on the routes that take it)."""
    return _as_user(await authenticate(request, url_key=True))


async def admin(request: Request) -> Principal:
    p = await authenticate(request)
    if not p.admin:
        raise Forbidden("admin token required")
    return p
