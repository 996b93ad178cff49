"""Per-request consumers (a KV watch, an ordered consumer) that go with
their reader.

Unsubscribing leaves an ephemeral push consumer on the server until its
`inactive_threshold`, which nats-py sets to 300 s for a KV watch: 500 job
listings in 3 s left 500 consumers behind for five minutes. So every such
consumer is created with a short threshold (it is deleted soon after its
reader is gone, even if the gateway dies) and deleted explicitly when its
reader is done.

Only public nats-py calls: a consumer's current name (an ordered consumer
gets a new one on each reset) comes from `sub.consumer_info()`, and it is
deleted with the JetStream manager's `delete_consumer`, on a JetStream
context the caller passes in. nats-py's `KeyValue.watch` keeps its
subscription private, so `KeyWatch` is a KV watch on an ordered consumer we
hold ourselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from schemas import names

log = logging.getLogger("gpubus.bus.ephemeral")

# A live reader keeps its consumer however quiet it is (interest, not
# traffic, counts); an abandoned one goes in seconds.
INACTIVE_THRESHOLD_S = 5.0
T = TypeVar("T")
_cleanups: set[asyncio.Future[Any]] = set()  # disposals in flight, held so they are not collected


async def created(create: Awaitable[T], dispose: Callable[[T], Awaitable[None]]) -> T:
    """`await create`, but a reader cancelled while its consumer is being
    created (a client that hangs up at once) still disposes of it: the
    server has made the consumer, and nobody else holds its handle."""
    task = asyncio.ensure_future(create)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda t: _dispose_later(t, dispose))
        raise


def _dispose_later(task: asyncio.Future[T], dispose: Callable[[T], Awaitable[None]]) -> None:
    if not task.cancelled() and task.exception() is None:
        _cleanups.add(cleanup := asyncio.ensure_future(dispose(task.result())))
        cleanup.add_done_callback(_cleanups.discard)


async def drop(js: JetStreamContext, sub: JetStreamContext.PushSubscription) -> None:
    """Unsubscribe a push subscription of nats-py and delete its consumer.

    Shielded: this runs in `finally` blocks of readers that are being
    cancelled (an SSE client went away), where, under anyio's cancel
    scopes, every await is cancelled again; the cleanup runs to its end
    in a task of its own even so."""
    await asyncio.shield(_unsubscribe_then_delete(js, sub.unsubscribe, sub))


async def stop_watch(watch: KeyWatch) -> None:
    """Stop a KV watch (its iterator ends) and delete its consumer (shielded, as `drop`)."""
    await asyncio.shield(_unsubscribe_then_delete(watch.js, watch.end, watch.subscription))


async def _unsubscribe_then_delete(
    js: JetStreamContext, unsubscribe: Callable[[], Awaitable[object]], sub: JetStreamContext.PushSubscription
) -> None:
    try:
        await unsubscribe()
    except NatsError as e:  # a closed connection: the server drops the consumer on its own
        log.debug("unsubscribe failed: %s", e)
    try:
        info = await sub.consumer_info()  # the current name, also after an ordered consumer's reset
        await js.delete_consumer(info.stream_name, info.name)
    except NatsError as e:  # gone already, or NATS away: inactive_threshold deletes it
        log.debug("consumer not deleted: %s", e)


class _End:
    """Queued after the last entry: the watch was stopped."""


_END = _End()


class KeyWatch:
    """A KV watch (latest value per key, then every change), iterated like
    nats-py's `KeyWatcher`: entries, with one `None` once the values there
    were at the start have all arrived. `start()` it; `stop_watch` ends it."""

    def __init__(self, js: JetStreamContext, bucket: str, keys: str, *, ignore_deletes: bool = False) -> None:
        self.js = js
        self._bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._keys = keys
        self._ignore_deletes = ignore_deletes
        self._updates: asyncio.Queue[KeyValue.Entry | None | _End] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._initial_sent = False
        self._sub: JetStreamContext.PushSubscription | None = None

    @property
    def subscription(self) -> JetStreamContext.PushSubscription:
        assert self._sub is not None, "KeyWatch.start() was not awaited"
        return self._sub

    async def start(self) -> KeyWatch:
        self._sub = await self.js.subscribe(
            self._prefix + self._keys,
            stream=names.kv_stream(self._bucket),
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        try:
            info = await self._sub.consumer_info()
        except BaseException:
            self._ready.cancel()
            await _unsubscribe_then_delete(self.js, self._sub.unsubscribe, self._sub)
            raise
        # Deliveries wait for this answer, so the marker goes out exactly once.
        # Only when the server has delivered nothing: its deliveries and this
        # answer reach us by different paths, so "nothing pending" may come
        # before the last values it counts as delivered, and the marker then
        # ended a listing early (3 of 1,500 `JobStore.list`s on a bucket being
        # written). Otherwise the last of them carries no pending (`_on_msg`).
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        if info.num_pending == 0 and delivered == 0:
            self._initial_done()
        self._ready.set_result(None)
        return self

    def _initial_done(self) -> None:
        if not self._initial_sent:
            self._initial_sent = True
            self._updates.put_nowait(None)

    async def _on_msg(self, msg: Msg) -> None:
        await self._ready
        meta = msg.metadata
        op = _operation(msg)
        if op is not False and not (self._ignore_deletes and op in (KV_DEL, KV_PURGE)):
            self._updates.put_nowait(
                KeyValue.Entry(
                    bucket=self._bucket,
                    key=msg.subject[len(self._prefix) :],
                    value=msg.data,
                    revision=meta.sequence.stream,
                    delta=meta.num_pending,
                    created=meta.timestamp,  # type: ignore[arg-type]  # nats-py's own KV watcher passes this datetime too
                    operation=op if isinstance(op, str) else None,
                )
            )
        if meta.num_pending == 0:
            self._initial_done()

    async def end(self) -> None:
        """Unsubscribe and end the iteration (entries already queued come first)."""
        await self.subscription.unsubscribe()
        self._updates.put_nowait(_END)

    def __aiter__(self) -> KeyWatch:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        entry = await self._updates.get()
        if isinstance(entry, _End):
            raise StopAsyncIteration
        return entry


def _operation(msg: Msg) -> str | None | bool:
    """The entry's operation (None: a value); False for a server marker of
    an unknown reason, skipped as nats-py does. Server-placed TTL/age
    markers (nats-server 2.11+) say `Nats-Marker-Reason`, not `KV-Operation`."""
    headers = msg.headers or {}
    if KV_OP in headers:
        return headers[KV_OP]
    reason = headers.get(KV_MARKER_REASON)
    if reason is None:
        return None
    return {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}.get(reason, False)
