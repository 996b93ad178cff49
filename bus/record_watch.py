"""Every job record update this gateway cares about, from one subscription.

A long poll (`?wait=`, the synchronous endpoints) waits on an in-memory
future for the record to turn terminal, and an SSE feed (bus/job_feed.py)
follows every new revision of one record, instead of each creating a KV
watch (a JetStream consumer) per request. One ordered consumer from "new"
on the bucket's subjects; a record is decoded only when someone waits for
it or follows it.

The latest sealed value of the records written lately is kept as it came
(`latest`): the materializer folds a job's outcome into a record created
elsewhere (by a bus client, or another gateway) from it, without reading
the record back from KV first (bus/jobstore.py, `JobStore.update`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from bus.jobstore import decode_job_record
from bus.sealing import RecordSeal
from bus.sized_lru import SizedLru
from schemas import codec, names
from schemas.jobs import JobRecord

log = logging.getLogger("gpubus.bus.record_watch")
T = TypeVar("T")

# A record lives in the bus from its create to its terminal write (a no-op
# job: milliseconds; a transcription: minutes), so the records heard lately
# are the ones folds come for; older ones are read from KV as before.
LATEST_RECORDS = 4096
LATEST_RECORDS_BYTES = 8 * 1024 * 1024


class RecordWatch:
    def __init__(self, js: JetStreamContext, seal: RecordSeal) -> None:
        self._js = js
        self._seal = seal
        self._prefix = names.kv_subject(names.JOBS_BUCKET, "")
        self._waiters: dict[str, set[asyncio.Future[JobRecord]]] = {}
        self._followers: dict[str, set[Callable[[JobRecord], None]]] = {}
        # key -> (sealed value, revision) of its last write heard
        self._latest: SizedLru[str, tuple[bytes, int]] = SizedLru(
            max_bytes=LATEST_RECORDS_BYTES, max_entries=LATEST_RECORDS
        )
        self._sub: JetStreamContext.PushSubscription | None = None
        self._restart: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._js.subscribe(
            self._prefix + ">",
            stream=names.kv_stream(names.JOBS_BUCKET),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            cb=self._on_update,
        )

    async def stop(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # its server may be gone: nothing to undo there
                await sub.unsubscribe()

    def restart_soon(self) -> None:
        """Subscribe afresh (call after a reconnect: the consumer behind the
        old subscription may have gone with its server). Waiters re-read
        their record every RECHECK_S, so an update lost in between only
        delays them."""
        if self._restart is None or self._restart.done():
            self._restart = asyncio.get_running_loop().create_task(self._resubscribe(), name="record-watch")

    async def _resubscribe(self) -> None:
        await self._unsubscribe()
        try:
            await self.start()
        except Exception as e:  # waiters fall back to their periodic re-read
            log.warning("record watch not resubscribed: %s", e)

    @contextlib.contextmanager
    def waiting(self, key: str) -> Iterator[asyncio.Future[JobRecord]]:
        """A future for `key`'s terminal record, registered for the block:
        register first, then read the record, so no update falls between."""
        fut: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
        with _registered(self._waiters, key, fut):
            yield fut

    @contextlib.contextmanager
    def following(self, key: str, deliver: Callable[[JobRecord], None]) -> Iterator[None]:
        """`deliver(record)` for every revision of `key` written while the
        block runs (register, then read the record, as with `waiting`)."""
        with _registered(self._followers, key, deliver):
            yield

    def awaited(self, key: str) -> bool:
        """Somebody waits for `key` to turn terminal (decode it for them)."""
        return bool(self._waiters.get(key))

    def answer_waiters(self, key: str, rec: JobRecord) -> None:
        """Resolve `key`'s waiters with its terminal record: as the watch
        brings it, or at once from this process's own committed write (its
        CAS won), which spares every long poll this gateway's materializer
        finishes the hop of the watch bringing the same revision back
        through the server."""
        for fut in self._waiters.get(key, ()):
            if not fut.done():
                fut.set_result(rec)

    def latest(self, key: str) -> tuple[bytes, int] | None:
        """(sealed value, revision) of `key`'s last write this watch heard
        lately, not opened: it may be behind KV (a write on its way, a gap
        after a reconnect), so it is for compare-and-set writes, which find
        that out, never for answering a read."""
        return self._latest.get(key)

    def _hear(self, key: str, msg: Msg) -> None:
        if msg.data:
            self._latest.put(key, (msg.data, msg.metadata.sequence.stream), len(msg.data))
        else:  # deleted or purged
            self._latest.pop(key)

    async def _on_update(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix) :]
        self._hear(key, msg)
        waiters, followers = self._waiters.get(key), self._followers.get(key)
        if not (waiters or followers) or not msg.data:
            return
        try:
            rec = decode_job_record(self._seal, msg.subject, msg.data)
        except codec.DecodeError as e:
            log.error("undecodable job record on %s: %s", msg.subject, e)
            return
        for deliver in list(followers or ()):
            deliver(rec)
        if rec.terminal:
            self.answer_waiters(key, rec)


@contextlib.contextmanager
def _registered(table: dict[str, set[T]], key: str, item: T) -> Iterator[None]:
    table.setdefault(key, set()).add(item)
    try:
        yield
    finally:
        members = table.get(key)
        if members is not None:
            members.discard(item)
            if not members:
                del table[key]
