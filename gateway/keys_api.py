"""API keys (admin creates, owners list and revoke) and node bootstrap."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bus import node_permissions
from bus.tls import fingerprint
from gateway.auth import Principal
from gateway.bodies import json_body
from gateway.deps import Admin, Anyone, State
from gateway.state import GatewayState
from gateway.webhook_fields import checked_webhook_url
from schemas import names
from schemas.errors import Forbidden, NotFound
from schemas.keys import ApiKeyRecord, Role
from schemas.names import Lane, Priority

router = APIRouter(tags=["auth"])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(pattern=names.OWNER_RE.pattern)
    description: str = Field("", max_length=200)
    expires_days: float | None = Field(None, gt=0, le=3650)
    role: Role | None = None
    roles: list[Role] | None = None
    max_upload_mb: int | None = Field(None, gt=0, le=1_000_000)
    max_active_jobs: int | None = Field(None, gt=0, le=1_000_000)
    # Where this key's jobs report their terminal states unless a job names its own.
    webhook_url: str | None = Field(None, max_length=4096)
    max_priority: Priority | None = None  # the highest priority the key may ask for; default any


class Bootstrap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lane: Lane
    shared: bool = False


def key_view(rec: ApiKeyRecord) -> dict[str, Any]:
    return rec.model_dump(mode="json", exclude={"secret_sha256", "webhook_secret"}, exclude_none=True)


@router.post("/api/v1/auth/keys", status_code=201)
async def create_key(request: Request, st: State, _: Admin) -> JSONResponse:
    body = await json_body(request, CreateKey)
    roles = body.roles or [body.role or Role.USER]
    webhook_url = checked_webhook_url(st, body.webhook_url, "webhook_url") if body.webhook_url else None
    full, rec = await st.keys.create(
        body.user_id,
        roles,
        description=body.description,
        expires_days=body.expires_days,
        max_upload_mb=body.max_upload_mb,
        max_active_jobs=body.max_active_jobs,
        webhook_url=webhook_url,
        max_priority=body.max_priority,
    )
    await st.ensure_owner(body.user_id)
    out = {
        "api_key": full,
        "key_id": rec.key_id,
        "user_id": rec.user_id,
        "roles": rec.roles,
        "role": rec.roles[0] if len(rec.roles) == 1 else ",".join(rec.roles),
        "expires_at": rec.expires_at,
        # Signs this key's completion webhooks (Standard Webhooks); shown
        # only here and by POST /api/v1/auth/keys/{key_id}/webhook-secret.
        "webhook_secret": st.keys.webhook_secret(rec),
        "max_priority": rec.max_priority,
    }
    if rec.webhook_url:
        out["webhook_url"] = rec.webhook_url
    return JSONResponse(out, status_code=201)


def manages_keys(p: Principal) -> bool:
    """The admin, or a key with the `user` role: a node key is the
    credential of an untrusted remote box, so it must not see or revoke its
    owner's other keys."""
    return p.admin or Role.USER in p.roles


@router.get("/api/v1/auth/keys")
async def list_keys(st: State, p: Anyone) -> dict[str, Any]:
    if not manages_keys(p):
        raise Forbidden("listing keys needs a key with the `user` role")
    recs = await st.keys.list(None if p.admin else p.user_id)
    return {"keys": [key_view(r) for r in recs]}


@router.delete("/api/v1/auth/keys/{key_id}")
async def revoke_key(key_id: str, st: State, p: Anyone) -> dict[str, Any]:
    """An owner revokes any of their keys; a node key only itself (a box
    that knows it is compromised can still retire its credential)."""
    if not manages_keys(p) and key_id != p.key_id:
        raise Forbidden("a key without the `user` role may revoke only itself")
    rec = await st.keys.get(key_id)
    if not p.admin and rec.user_id != p.user_id:
        raise NotFound(f"no key {key_id}")
    revoked = await st.keys.revoke(key_id)
    if st.auth_callout is not None:  # connected nodes of this key are cut off now
        await st.auth_callout.revoked(key_id)
    return key_view(revoked)


@router.post("/api/v1/auth/keys/{key_id}/webhook-secret")
async def rotate_webhook_secret(key_id: str, st: State, p: Anyone) -> dict[str, Any]:
    """A new webhook signing secret for one of the caller's keys, shown
    this once; the old one stops signing at once (deliveries still being
    retried are signed with the new one). A key made before webhooks
    existed gets its first secret here."""
    if not manages_keys(p):
        raise Forbidden("managing keys needs a key with the `user` role")
    rec = await st.keys.get(key_id)
    if not p.admin and rec.user_id != p.user_id:
        raise NotFound(f"no key {key_id}")
    _, secret = await st.keys.new_webhook_secret(key_id)
    return {"key_id": key_id, "webhook_secret": secret}


@router.post("/api/v1/auth/validate-key")
async def validate_key(p: Anyone) -> dict[str, Any]:
    return {"valid": True, "user_id": p.user_id, "roles": sorted(p.roles), "admin": p.admin, "key_id": p.key_id}


@router.post("/api/v1/nodes/bootstrap")
async def bootstrap_node(request: Request, st: State, p: Anyone) -> dict[str, Any]:
    """A node learns its queue from its credentials: a key with the `node`
    role runs its owner's lanes; the service identity runs the shared pool."""
    body = await json_body(request, Bootstrap)
    if body.shared:
        if not p.admin:
            raise Forbidden("a shared-pool node runs with the service identity (GPUBUS_ADMIN_TOKEN)")
        if body.lane is not Lane.CPU:
            raise Forbidden("the shared pool is CPU only")
        queue_owner = names.SHARED
    else:
        if p.admin:
            raise Forbidden("a user's node runs with that user's key (role `node`)")
        if Role.NODE not in p.roles:
            raise Forbidden("this key has no `node` role; create one with `gpubus keys create USER --role node`")
        queue_owner = p.user_id
        await st.ensure_owner(queue_owner)
    return {
        "queue_owner": queue_owner,
        "lane": body.lane.value,
        "consumer": names.consumer_name(queue_owner, body.lane),
        "nats_servers": st.settings.nats_public_servers,
        # Nodes present their own key to NATS (auth callout); replies come to
        # an inbox only their owner's connections may read.
        "inbox_prefix": node_permissions.inbox_prefix(queue_owner) if queue_owner != names.SHARED else "_INBOX",
        # With authorization on, a user's node lives in account NODES and sees
        # JetStream through its imports; without it (a bare dev server) there
        # is only the one account.
        "js_api_prefix": (
            node_permissions.NODE_JS_API
            if queue_owner != names.SHARED and st.auth_callout is not None
            else node_permissions.JS_API
        ),
        **_nats_ca(st),
    }


def _nats_ca(st: GatewayState) -> dict[str, str]:
    """The CA a node verifies NATS with: it trusts the gateway (verified by
    its own CA file or pin), so it can learn the NATS CA from it. Read per
    request, so a rotated CA file reaches the next node without a restart."""
    path = st.settings.nats_ca_file
    if path is None:
        return {}
    pem = path.read_text()
    return {"nats_ca_pem": pem, "nats_ca_sha256": fingerprint(pem)}
