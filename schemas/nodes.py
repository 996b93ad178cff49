"""What a node says about itself every few seconds (KV `nodes`)."""

from __future__ import annotations

from pydantic import BaseModel

from schemas.jobs import SCHEMA_VERSION
from schemas.names import Lane


class NodeHeartbeat(BaseModel):
    v: int = SCHEMA_VERSION
    node_id: str
    owner: str  # the queue owner: a user id, or `shared`
    lane: Lane
    device: str
    kinds: list[str]
    models: list[str]
    capacity: int
    busy: int
    last_seen: float
    started_at: float
    metrics_url: str | None = None
    jobs_done: int = 0
