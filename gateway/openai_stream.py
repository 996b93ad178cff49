"""`stream=true` on the OpenAI-compatible endpoints: the text as the node makes it.

Server-Sent Events shaped as OpenAI's (and speaches'): a `data:` line of
JSON per event, `{"type": "transcript.text.delta", "delta": ...}` for each
finished segment, then `{"type": "transcript.text.done", "text": ...}`.
The deltas are the job's `segment` events, from the same feed as
`GET /api/v1/jobs/{id}/events` (bus/job_feed.py); the done text is the
stored result's, so it is exactly the non-streamed transcript. Segments the
feed never carried (a lost core publish) are sent from the result before
`done`, so the deltas add up to the text. A segment index already sent is
not sent again: a job that moved to another node after some of its text
was streamed goes on from where the stream was. A job that does not
succeed ends the stream with an `error` object, which the official client
raises as `openai.APIError`.

The stream is not counted against GPUBUS_MAX_EVENT_STREAMS: it belongs to
the job the same request submitted, which the owner's active-job limit
already counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from bus import job_feed
from gateway.events_api import FeedResponse
from gateway.results import parse_transcript, read_transcript
from gateway.state import GatewayState
from schemas.errors import GpubusError
from schemas.events import TextSegment
from schemas.jobs import JobRecord, JobStatus
from schemas.results import Transcript

log = logging.getLogger("gpubus.gateway.openai")

DELTA = "transcript.text.delta"
DONE = "transcript.text.done"


def _data(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def delta_event(text: str) -> bytes:
    return _data({"type": DELTA, "delta": text, "logprobs": None})


def done_event(text: str) -> bytes:
    return _data({"type": DONE, "text": text, "logprobs": None})


def error_event(code: str, message: str, *, caller_fault: bool) -> bytes:
    kind = "invalid_request_error" if caller_fault else "server_error"
    return _data({"error": {"message": message, "type": kind, "param": None, "code": code}})


class Deltas:
    """Which segments went out: each index once, in order, the first
    without its leading space (Whisper's segments start with one)."""

    def __init__(self) -> None:
        self.next_index = 0
        self._started = False

    def take(self, seg: TextSegment) -> str | None:
        """The delta text for `seg`, or None when there is nothing to send."""
        if seg.index < self.next_index:
            return None
        self.next_index = seg.index + 1
        text = seg.text if self._started else seg.text.lstrip()
        if not text:
            return None
        self._started = True
        return text

    def rest(self, transcript: Transcript) -> list[str]:
        """The result's segments the feed did not carry."""
        out = []
        for s in transcript.segments:
            if (text := self.take(TextSegment.of(s.id, s.start, s.end, s.text))) is not None:
                out.append(text)
        return out


async def _events(st: GatewayState, first: JobRecord) -> AsyncIterator[bytes]:
    deltas = Deltas()
    last = first
    async with contextlib.aclosing(job_feed.follow(st.feeds, first)) as feed:
        async for item in feed:
            if item.kind == "ping":
                yield b": ping\n\n"
            elif item.record is not None:
                last = item.record
            elif item.event is not None and item.event.segment is not None:
                if (text := deltas.take(item.event.segment)) is not None:
                    yield delta_event(text)
    async for chunk in _ending(st, last, deltas):
        yield chunk


async def _ending(st: GatewayState, rec: JobRecord, deltas: Deltas) -> AsyncIterator[bytes]:
    """What follows the job's terminal record: the rest of the text and
    `done`, or the job's error."""
    if rec.status != JobStatus.SUCCEEDED:
        error = rec.error
        code = error.code if error else rec.status.value.upper()
        message = f"job {rec.job_id} {rec.status}" + (f": {error.message}" if error else "")
        yield error_event(code, message, caller_fault=rec.status == JobStatus.FAILED)
        return
    try:
        transcript = parse_transcript(rec, await read_transcript(st, rec))
    except GpubusError as e:
        log.warning("job %s: result unreadable for its stream: %s", rec.job_id, e.message)
        yield error_event(e.code, e.message, caller_fault=False)
        return
    for text in deltas.rest(transcript):
        yield delta_event(text)
    yield done_event(transcript.text)


def stream_response(st: GatewayState, rec: JobRecord) -> FeedResponse:
    """The job `rec` (just submitted) as an OpenAI transcription stream."""
    return FeedResponse(_events(st, rec), release=lambda: None)
