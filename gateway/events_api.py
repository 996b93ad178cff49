"""`GET /api/v1/jobs/{id}/events`: a job's progress as Server-Sent Events.

The first event is `state` (the record now); then the node's `started`,
`progress`, `succeeded`/`failed`/`cancelled` events as they happen, `state`
whenever the record changes, and a `: ping` comment when nothing happened for
a while (so proxies keep the connection). The stream ends after a `state`
with a terminal status. Event data is JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from bus import job_feed
from gateway import auth
from gateway.auth import Principal
from gateway.jobs_api import job_view
from gateway.state import GatewayState

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
User = Annotated[Principal, Depends(auth.user)]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(feed: AsyncIterator[job_feed.FeedItem]) -> AsyncIterator[bytes]:
    async for item in feed:
        if item.kind == "ping":
            yield b": ping\n\n"
        elif item.kind == "state" and item.record is not None:
            yield sse("state", job_view(item.record))
        elif item.event is not None:
            yield sse(item.event.type.value, item.event.model_dump(mode="json", exclude_none=True))


@router.get("/{job_id}/events")
async def job_events(request: Request, job_id: str, principal: User) -> StreamingResponse:
    st: GatewayState = request.app.state.gateway
    first, _ = await st.jobs.get(principal.user_id, job_id)  # 404 before the stream starts
    feed = job_feed.follow(st.js, st.jobs, first)
    return StreamingResponse(_stream(feed), media_type="text/event-stream", headers=SSE_HEADERS)
