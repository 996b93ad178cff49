"""`GET /api/v1/jobs/{id}/events`: a job's progress as Server-Sent Events.

The first event is `state` (the record now); then the node's `started`,
`progress`, `succeeded`/`failed`/`cancelled` events as they happen, `state`
whenever the record changes, and a `: ping` comment when nothing happened for
a while (so proxies keep the connection). The stream ends after a `state`
with a terminal status. Event data is JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from bus import job_feed
from gateway.deps import State, User
from gateway.job_views import job_view

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(feed: AsyncGenerator[job_feed.FeedItem, None]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(feed):  # closing this stream closes the feed, with its consumers
        async for item in feed:
            if item.kind == "ping":
                yield b": ping\n\n"
            elif item.kind == "state" and item.record is not None:
                yield sse("state", job_view(item.record))
            elif item.event is not None:
                # An inline result is the result route's to serve, not every progress watcher's.
                body = item.event.model_dump(mode="json", exclude_none=True, exclude={"result_inline"})
                yield sse(item.event.type.value, body)


class FeedResponse(StreamingResponse):
    """An SSE response that closes its feed and gives back its stream slot
    however it ends. A client that goes away cancels Starlette's streaming
    task, which leaves the generator suspended, with its consumers, until
    the garbage collector finalizes it; here they go at once."""

    def __init__(self, feed: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(feed, media_type="text/event-stream", headers=SSE_HEADERS)
        self._feed = feed
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._feed.aclose()  # type: ignore[attr-defined]
            finally:
                self._release()


@router.get("/{job_id}/events")
async def job_events(job_id: str, st: State, principal: User) -> StreamingResponse:
    first, _ = await st.jobs.get(principal.user_id, job_id)  # 404 before the stream starts
    release = st.event_streams.take(principal.user_id)  # 429 when the owner has too many open
    return FeedResponse(_stream(job_feed.follow(st.feeds, first)), release)
