"""Reading a finished job's result back, wherever its node stored it.

A small result rides inside the node's `succeeded` event (EVENTS keeps it
as long as the owner's bucket keeps files), so the record points at that
event by sequence and keeps the digest of the text the materializer saw:
one direct get, no object meta then chunk. A large one is an object in the
owner's bucket, as before. The gateway whose materializer folded the
`succeeded` keeps its inline result for a while (`RecentResults`), so the
long poll that waited for the job answers without even that get.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import objects
from bus.sized_lru import SizedLru
from schemas import codec, names
from schemas.errors import NotFound, ResultUnreadable
from schemas.events import EventType, JobEvent, inline_digest
from schemas.jobs import JobRecord

RECENT_RESULTS_BYTES = 8 * 1024 * 1024


class RecentResults:
    """Inline results of the `succeeded` events this process folded lately,
    by EVENTS sequence, oldest out first past `max_bytes` (each entry counted
    with what it costs besides its text: bus/sized_lru.py). A client
    that waited for its job (a long poll, a synchronous endpoint) asks for
    the result the moment the record turns terminal, and here it is, with
    no round trip. Served only when the record names that sequence and the
    text matches its digest, as a read from the stream is checked."""

    def __init__(self, max_bytes: int = RECENT_RESULTS_BYTES) -> None:
        self._texts: SizedLru[int, str] = SizedLru(max_bytes=max_bytes)

    def __len__(self) -> int:
        return len(self._texts)

    def put(self, seq: int, text: str) -> None:
        self._texts.put(seq, text, len(text))

    def for_record(self, rec: JobRecord) -> bytes | None:
        """The record's inline result if it is here and matches its digest."""
        seq = rec.result_event_seq
        text = self._texts.get(seq) if seq is not None else None
        if text is None or inline_digest(text) != rec.result_sha256:
            return None
        return text.encode()


async def read_result(js: JetStreamContext, rec: JobRecord, recent: RecentResults | None = None) -> bytes:
    """The result bytes of a succeeded record; NotFound once expired."""
    if rec.result_event_seq is not None:
        held = recent.for_record(rec) if recent is not None else None
        return held if held is not None else await _read_inline(js, rec, rec.result_event_seq)
    if rec.result_object is None:
        raise NotFound(f"job {rec.job_id} has no stored result")
    return await objects.read_bytes(js, names.files_bucket(rec.owner), rec.result_object)


async def _read_inline(js: JetStreamContext, rec: JobRecord, seq: int) -> bytes:
    try:
        raw = await js.get_msg(names.EVENTS_STREAM, seq=seq, direct=True)
    except NotFoundError:
        try:  # a replica that has not applied it yet: ask the leader
            raw = await js.get_msg(names.EVENTS_STREAM, seq=seq)
        except NotFoundError:
            raise NotFound(f"the result of job {rec.job_id} has expired") from None
    if raw.subject != names.event_subject(rec.owner, rec.job_id) or raw.data is None:
        raise ResultUnreadable(f"job {rec.job_id}: event {seq} is not its result")
    try:
        ev = codec.decode(raw.data, JobEvent)
    except codec.DecodeError:
        raise ResultUnreadable(f"job {rec.job_id}: event {seq} does not decode") from None
    text = ev.result_inline
    if ev.type != EventType.SUCCEEDED or text is None or inline_digest(text) != rec.result_sha256:
        raise ResultUnreadable(f"job {rec.job_id}: event {seq} does not hold the result the record names")
    return text.encode()
