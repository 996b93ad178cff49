"""How every gpubus pull loop asks JetStream for messages.

`fetch(n>1, timeout=T)` on a consumer with nothing more to give holds its
request open for the whole T even after the first message arrived (nats-py
sends `no_wait` with `expires`, which the server treats as "wait for at least
one"), so a batch fetch costs T of latency whenever the queue runs dry. We
wait for one message with a long timeout (it returns the moment one arrives),
then take whatever else is already there with a `no_wait` request *without*
`expires`, which the server answers at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

DRAIN_TIMEOUT_S = 0.05  # only a safety net: the server answers a no_wait request at once
STATUS_HEADER = "Status"
IDLE_HEARTBEAT = "100"
log = logging.getLogger("gpubus.bus.pulling")


async def next_batch(psub, *, max_batch: int, wait_s: float) -> list[Msg]:
    """Up to `max_batch` messages; [] when none came within `wait_s`."""
    try:
        msgs = await psub.fetch(1, timeout=wait_s)
    except (NatsTimeoutError, asyncio.TimeoutError):
        return []
    if max_batch > 1:
        msgs += await take_available(psub, max_batch - 1)
    return msgs


async def take_available(psub, max_msgs: int) -> list[Msg]:
    """Up to `max_msgs` messages the consumer has right now, without
    lingering. nats-py (pinned 2.16.0) has no public call for this, so this
    sends the pull request itself on the subscription's own inbox; any
    status (404 no messages, 408 from an older request) ends the drain, and
    fetch() discards stray statuses later."""
    request = json.dumps({"batch": max_msgs, "no_wait": True}).encode()
    await psub._nc.publish(psub._nms, request, reply=psub._deliver)
    out: list[Msg] = []
    while len(out) < max_msgs:
        try:
            msg = await psub._sub.next_msg(timeout=DRAIN_TIMEOUT_S)
        except (NatsTimeoutError, asyncio.TimeoutError):
            break
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status == IDLE_HEARTBEAT:
            continue
        if status:
            break
        out.append(msg)
    return out


class DurableLoop:
    """A background task pulling one durable consumer and handing each batch
    to `handle` (which settles every message in it). Used by the gateway
    side's materializer and fallback router; JetStream keeps what arrives
    while it is down."""

    def __init__(
        self,
        js,
        *,
        durable: str,
        stream: str,
        handle: Callable[[list[Msg]], Awaitable[None]],
        max_batch: int = 64,
        wait_s: float = 5.0,
    ) -> None:
        self._js = js
        self._durable = durable
        self._stream = stream
        self._handle = handle
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        self._task = asyncio.create_task(self._run(sub), name=self._durable)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, sub) -> None:
        while True:
            try:
                msgs = await next_batch(sub, max_batch=self._max_batch, wait_s=self._wait_s)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection trouble: the messages wait in the stream
                log.warning("%s: fetch failed: %s", self._durable, e)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            try:
                await self._handle(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # unsettled messages come back after ack_wait
                log.warning("%s: batch not settled: %s", self._durable, e)
