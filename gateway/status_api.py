"""Liveness, readiness, workers and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import auth
from gateway.auth import Principal
from gateway.state import GatewayState
from schemas.names import SHARED

router = APIRouter(tags=["status"])
Anyone = Annotated[Principal, Depends(auth.authenticate)]
Admin = Annotated[Principal, Depends(auth.admin)]


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    st: GatewayState = request.app.state.gateway
    ok = st.ready and st.nc is not None and st.nc.is_connected
    return JSONResponse({"status": "ready" if ok else "not_ready"}, status_code=200 if ok else 503)


@router.get("/api/v1/status/workers")
async def workers(request: Request, p: Anyone) -> dict[str, Any]:
    """Live nodes: an admin sees all; a user sees their own and shared ones."""
    st: GatewayState = request.app.state.gateway
    nodes = [n for n in st.nodes.live() if p.admin or n.owner in (p.user_id, SHARED)]
    nodes.sort(key=lambda n: (n.owner, n.lane, n.node_id))
    return {"nodes": [n.model_dump(mode="json", exclude={"v", "started_at", "jobs_done"}) | {"jobs_done": n.jobs_done} for n in nodes]}


@router.get("/metrics")
async def metrics(request: Request, _: Admin) -> Response:
    """Admin token only: the labels name every tenant and its queues."""
    st: GatewayState = request.app.state.gateway
    return Response(generate_latest(st.registry), media_type=CONTENT_TYPE_LATEST)
