"""Every API key record in the gateway's memory, kept current by one KV watch.

Each request used to read its key from KV `apikeys`: a round trip on every
call. The mirror answers from memory instead, and stays as strict as the read
was: a revocation written by any gateway reaches every gateway's watch within
milliseconds (a test holds it under 100 ms on two gateways).

It answers only while it can vouch for itself: its watch has delivered every
record there was when it started, and the connection has not been lost since
(nats-py's reconnect count is the witness; a reconnect rebuilds it). Whatever
it does not hold (a key created on another gateway a moment ago) or cannot
vouch for is read from KV as before, so the mirror can make a request faster,
never let a revoked key in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE

from bus import ephemeral
from bus.task_cancel import cancel_and_wait
from schemas import names
from schemas.keys import ApiKeyRecord

log = logging.getLogger("gpubus.bus.key_mirror")

Decode = Callable[[str, bytes], ApiKeyRecord | None]  # None: a record that is not a gateway's


class KeyMirror:
    def __init__(self, nc: NatsClient, js: JetStreamContext, decode: Decode) -> None:
        self._nc = nc
        self._js = js
        self._decode = decode
        self._records: dict[str, ApiKeyRecord] = {}
        self._revisions: dict[str, int] = {}  # of each record held: an older one never replaces it
        self._fresh_at_reconnects: int | None = None  # the reconnect count it was complete at
        self._task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()  # replaced followers not yet seen to end

    def lookup(self, key_id: str) -> ApiKeyRecord | None:
        """The record, or None: not held, or the mirror cannot vouch now."""
        if self._fresh_at_reconnects is None or not self._nc.is_connected:
            return None
        if self._nc.stats["reconnects"] != self._fresh_at_reconnects:
            return None
        return self._records.get(key_id)

    def learn(self, key_id: str, rec: ApiKeyRecord, revision: int) -> None:
        """A record this gateway just wrote (a revocation): held at once, so
        the very next request here sees it, whenever the watch brings it."""
        if revision >= self._revisions.get(key_id, 0):
            self._records[key_id], self._revisions[key_id] = rec, revision

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="key-mirror")

    def rebuild(self) -> None:
        """After a reconnect: what changed meanwhile may have been missed."""
        self._fresh_at_reconnects = None
        self._retire(self._task)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="key-mirror")

    async def stop(self) -> None:
        self._fresh_at_reconnects = None
        self._retire(self._task)
        await self._end_retired()

    def _retire(self, task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _end_retired(self) -> None:
        """Every follower replaced so far, however many rebuilds ago, ended.
        Not only the last one: a follower cancelled by the next rebuild while
        it was still ending its own predecessor never finished that, and a
        cancel alone may not end a follower (bus/task_cancel.py)."""
        for task in list(self._retired):  # later ones are whoever replaces the caller's
            if task is not asyncio.current_task():  # retired before it ran: a newer follower ends it
                await cancel_and_wait(task)

    async def _follow(self) -> None:
        """The followers it replaces are ended first, so two never write the mirror at once."""
        await self._end_retired()
        while True:
            try:
                await self._follow_one_watch()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # NATS away: requests read KV meanwhile
                log.warning("key mirror watch failed (%s); starting again", e)
            await asyncio.sleep(1.0)

    async def _follow_one_watch(self) -> None:
        """The records there are, a marker, then every change."""
        reconnects = self._nc.stats["reconnects"]
        watch = await ephemeral.KeyWatch(self._js, names.APIKEYS_BUCKET, ">").start()
        records: dict[str, ApiKeyRecord] = {}
        revisions: dict[str, int] = {}
        self._records, self._revisions = records, revisions
        try:
            async for entry in watch:
                if entry is None:  # every record there was is in
                    self._fresh_at_reconnects = reconnects
                    continue
                revision = entry.revision or 0
                if revision < revisions.get(entry.key, 0):
                    continue  # this gateway already holds a later write (`learn`)
                revisions[entry.key] = revision
                rec = None
                if entry.operation not in (KV_DEL, KV_PURGE) and entry.value:
                    rec = self._decode(entry.key, entry.value)
                if rec is None:
                    records.pop(entry.key, None)
                else:
                    records[entry.key] = rec
        finally:
            self._fresh_at_reconnects = None
            await ephemeral.stop_watch(watch)
