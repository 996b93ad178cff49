"""OpenAI's model listing: `GET /v1/models` and `GET /v1/models/{model}`.

What the caller's live fleet serves (their own nodes and the shared pool,
gateway/fleet_models.py), plus `whisper-1`, OpenAI's name, which means the
fleet's default model and is accepted whether or not a node is up (its jobs
wait for one). `client.models.list()` and `client.models.retrieve("whisper-1")`
work; any other name is a 404 `model_not_found`, as from OpenAI.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import State, User
from gateway.state import GatewayState
from schemas.errors import ModelNotServed
from schemas.names import SHARED

router = APIRouter(prefix="/v1/models", tags=["openai"])

ALIAS = "whisper-1"


def _served(st: GatewayState, owner: str) -> dict[str, dict[str, Any]]:
    """Model objects by id: `created` is when the first node serving it
    started, `owned_by` whose node it is (the caller's, or `shared`)."""
    models: dict[str, dict[str, Any]] = {}
    for node in st.nodes.live():
        if node.owner not in (owner, SHARED):
            continue
        for name in node.models:
            seen = models.get(name)
            if seen is None or node.started_at < seen["created"]:
                models[name] = _model(name, node.started_at, node.owner)
    return models


def _model(name: str, created: float, owned_by: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": owned_by}


def _listing(st: GatewayState, owner: str) -> list[dict[str, Any]]:
    served = _served(st, owner)
    first = min((m["created"] for m in served.values()), default=0)
    return [_model(ALIAS, first, "gpubus"), *(served[name] for name in sorted(served))]


@router.get("")
async def list_models(st: State, principal: User) -> dict[str, Any]:
    return {"object": "list", "data": _listing(st, principal.user_id)}


@router.get("/{model:path}")
async def retrieve_model(model: str, st: State, principal: User) -> dict[str, Any]:
    for m in _listing(st, principal.user_id):
        if m["id"] == model:
            return m
    raise ModelNotServed(f"The model {model!r} does not exist or no live node of yours serves it")
