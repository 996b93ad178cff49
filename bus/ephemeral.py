"""Per-request consumers (a KV watch, an ordered consumer) that go with
their reader.

Unsubscribing leaves an ephemeral push consumer on the server until its
`inactive_threshold`, which nats-py sets to 300 s for a KV watch: 500 job
listings in 3 s left 500 consumers behind for five minutes. So every such
consumer is created with a short threshold (it is deleted soon after its
reader is gone, even if the gateway dies) and deleted explicitly when its
reader is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

log = logging.getLogger("gpubus.bus.ephemeral")

# A live reader keeps its consumer however quiet it is (interest, not
# traffic, counts); an abandoned one goes in seconds.
INACTIVE_THRESHOLD_S = 5.0
T = TypeVar("T")
_cleanups: set[asyncio.Future] = set()  # disposals in flight, held so they are not collected


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


async def drop(sub) -> None:
    """Unsubscribe a push subscription of nats-py and delete its consumer.

    Shielded: this runs in `finally` blocks of readers that are being
    cancelled (an SSE client went away), where, under anyio's cancel
    scopes, every await is cancelled again; the cleanup runs to its end
    in a task of its own even so."""
    await asyncio.shield(_unsubscribe_then_delete(sub.unsubscribe, sub))


async def stop_watch(watcher: KeyValue.KeyWatcher) -> None:
    """Stop a KV watch (its iterator ends) and delete its consumer (shielded, as `drop`)."""
    await asyncio.shield(_unsubscribe_then_delete(watcher.stop, watcher._sub))


async def _unsubscribe_then_delete(unsubscribe: Callable[[], Awaitable[object]], sub) -> None:
    try:
        await unsubscribe()
    except NatsError as e:  # a closed connection: the server drops the consumer on its own
        log.debug("unsubscribe failed: %s", e)
    await _delete_consumer(sub)


async def _delete_consumer(sub) -> None:
    """The subscription knows its stream, consumer and JetStream context
    only as private attributes (`_stream`, `_consumer`, `_js`); the consumer
    name is the current one, also after an ordered consumer's reset."""
    try:
        await sub._js.delete_consumer(sub._stream, sub._consumer)
    except NatsError as e:  # gone already, or NATS away: inactive_threshold deletes it
        log.debug("consumer %s on %s not deleted: %s", sub._consumer, sub._stream, e)
