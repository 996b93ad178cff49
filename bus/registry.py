"""The node registry: nodes heartbeat into KV `nodes`; the gateway keeps a
live view of it in memory, fed by a watch, so routing never waits on NATS.

The bucket's TTL (about three heartbeats) expires a node that vanished; the
view also ages entries itself, since a TTL expiry is not always announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from schemas import codec, names
from schemas.names import Lane
from schemas.nodes import NodeHeartbeat

log = logging.getLogger("gpubus.bus.registry")


async def beat(kv: KeyValue, hb: NodeHeartbeat) -> None:
    await kv.put(names.node_key(hb.owner, hb.lane, hb.node_id), codec.encode_record(hb))


async def forget(kv: KeyValue, owner: str, lane: Lane, node_id: str) -> None:
    await kv.delete(names.node_key(owner, lane, node_id))


class LiveNodes:
    def __init__(self, kv: KeyValue, *, ttl_s: float) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._nodes: dict[str, NodeHeartbeat] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._rewatch = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="live-nodes")
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def rewatch(self) -> None:
        """Start over from a fresh snapshot (call after a reconnect: the
        server-side state of the old watch may be gone with the server)."""
        self._rewatch.set()

    async def _watch(self) -> None:
        """Watch the bucket; start a fresh watch when told to, or when it has
        been silent for a TTL (live nodes beat every third of one, so silence
        means no nodes or a watch that died with its server)."""
        while True:
            watcher = None
            try:
                watcher = await self._kv.watchall()
                self._rewatch.clear()
                while not self._rewatch.is_set():
                    entry = await watcher.updates(timeout=self._ttl_s)
                    if entry is None:
                        self._ready.set()
                        continue
                    self._apply(entry.key, entry.operation, entry.value)
                    if entry.delta == 0:
                        self._ready.set()
            except asyncio.CancelledError:
                raise
            except NatsTimeoutError:
                self._ready.set()
            except Exception as e:
                log.warning("node registry watch failed (%s); re-watching", e)
                await asyncio.sleep(1.0)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    def _apply(self, key: str, op: str | None, value: bytes | None) -> None:
        if op in (KV_DEL, KV_PURGE) or not value:
            self._nodes.pop(key, None)
            return
        try:
            self._nodes[key] = codec.decode_record(value, NodeHeartbeat)
        except codec.DecodeError as e:
            log.warning("bad heartbeat under %s: %s", key, e)

    def live(self, *, owner: str | None = None, lane: Lane | None = None) -> list[NodeHeartbeat]:
        cutoff = time.time() - self._ttl_s
        return [
            n
            for n in self._nodes.values()
            if n.last_seen >= cutoff and (owner is None or n.owner == owner) and (lane is None or n.lane == lane)
        ]
