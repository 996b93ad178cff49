"""Liveness, readiness, workers and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import Admin, Anyone, State
from schemas.names import SHARED

router = APIRouter(tags=["status"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(st: State) -> JSONResponse:
    ok = st.ready and st.nc.is_connected
    return JSONResponse({"status": "ready" if ok else "not_ready"}, status_code=200 if ok else 503)


@router.get("/api/v1/status/workers")
async def workers(st: State, p: Anyone) -> dict[str, Any]:
    """Live nodes: an admin sees all; a user sees their own and shared ones."""
    nodes = [n for n in st.nodes.live() if p.admin or n.owner in (p.user_id, SHARED)]
    nodes.sort(key=lambda n: (n.owner, n.lane, n.node_id))
    return {
        "nodes": [
            n.model_dump(mode="json", exclude={"v", "started_at", "jobs_done"}) | {"jobs_done": n.jobs_done}
            for n in nodes
        ]
    }


@router.get("/metrics")
async def metrics(st: State, _: Admin) -> Response:
    """Admin token only: the labels name every tenant and its queues."""
    return Response(generate_latest(st.registry), media_type=CONTENT_TYPE_LATEST)
