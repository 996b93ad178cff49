"""The node registry: nodes heartbeat into KV `nodes`; the gateway keeps a
live view of it in memory, fed by a watch, so routing never waits on NATS.

The bucket's TTL (about three heartbeats) expires a node that vanished; the
view also ages entries itself, since a TTL expiry is not always announced.

A node may write any body under its owner's keys (`<owner>.<lane>.<node_id>`),
so only the key and the server say who and when: a body that names another
owner, lane or node id is ignored (it made one user's node a "live node" of
another user, whose jobs then waited for it for ever: review F2), and an
entry ages by the server's timestamp of the write, never by the node's
`last_seen` (one set ten years ahead never aged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from bus.task_cancel import cancel_and_wait
from schemas import codec, names
from schemas.names import Lane
from schemas.nodes import NodeHeartbeat, metrics_url_refusal

log = logging.getLogger("gpubus.bus.registry")

LOGGED_KEYS_MAX = 1024  # bad keys warned about once each; past this, counted only


async def beat(kv: KeyValue, hb: NodeHeartbeat) -> None:
    await kv.put(names.node_key(hb.owner, hb.lane, hb.node_id), codec.encode_record(hb))


async def forget(kv: KeyValue, owner: str, lane: Lane, node_id: str) -> None:
    await kv.delete(names.node_key(owner, lane, node_id))


def key_refusal(key: str, hb: NodeHeartbeat) -> str | None:
    """Why a heartbeat's body does not belong under its key, or None."""
    owner, lane, node_id = (key.split(".", 2) + ["", ""])[:3]
    if (hb.owner, str(hb.lane), hb.node_id) != (owner, lane, node_id):
        return f"body says {hb.owner}.{hb.lane}.{hb.node_id[:40]}"
    return None


def _server_time(created: datetime | None, now: float) -> float:
    """When the server stored the entry, never later than our own clock (a
    server clock ahead of ours must not make an entry live longer)."""
    return now if created is None else min(now, created.timestamp())


class LiveNodes:
    def __init__(self, kv: KeyValue, *, ttl_s: float, on_bad: Callable[[], None] = lambda: None) -> None:
        self._kv = kv
        self._ttl_s = ttl_s
        self._on_bad = on_bad
        self._nodes: dict[str, tuple[NodeHeartbeat, float]] = {}  # key -> (heartbeat, server time of the write)
        self._logged: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._rewatch = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="live-nodes")
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

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
                    entry = await watcher.updates(timeout=self._ttl_s)  # type: ignore[no-untyped-call]
                    if entry is None:
                        self._ready.set()
                        continue
                    self._apply(entry.key, entry.operation, entry.value, entry.created)
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
                        await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, key: str, op: str | None, value: bytes | None, created: datetime | None = None) -> None:
        self._nodes.pop(key, None)  # whatever the key held before is replaced, even by a refused body
        if op in (KV_DEL, KV_PURGE) or not value:
            return
        try:
            hb = codec.decode_record(value, NodeHeartbeat)
        except codec.DecodeError as e:
            self._refuse(key, f"undecodable: {e}")
            return
        why = key_refusal(key, hb)
        if why is not None:
            self._refuse(key, why)
            return
        if hb.metrics_url is not None and (bad_url := metrics_url_refusal(hb.metrics_url)) is not None:
            self._refuse(key, f"metrics_url refused: {bad_url}")  # the node still counts; its URL does not
            hb.metrics_url = None
        stamp = _server_time(created, time.time())
        hb.last_seen = min(hb.last_seen, stamp)  # a node's clock may not claim the future
        self._nodes[key] = (hb, stamp)

    def _refuse(self, key: str, why: str) -> None:
        """Counted every time, logged once per key: a node rewriting a bad
        entry every heartbeat would otherwise flood the log."""
        self._on_bad()
        if key not in self._logged and len(self._logged) < LOGGED_KEYS_MAX:
            self._logged.add(key)
            log.warning("node registry entry %s refused: %s", key, why)

    def live(self, *, owner: str | None = None, lane: Lane | None = None) -> list[NodeHeartbeat]:
        """Nodes whose last write the server stored within the TTL; older
        entries are dropped here, since a TTL expiry leaves no DEL marker."""
        cutoff = time.time() - self._ttl_s
        for key in [k for k, (_, stamp) in self._nodes.items() if stamp < cutoff]:
            del self._nodes[key]
        return [
            n
            for n, _ in self._nodes.values()
            if (owner is None or n.owner == owner) and (lane is None or n.lane == lane)
        ]
