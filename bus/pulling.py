"""How every gpubus pull loop asks JetStream for messages.

`fetch(n>1, timeout=T)` on a consumer with nothing more to give holds its
request open for the whole T even after the first message arrived (nats-py
sends `no_wait` with `expires`, which the server treats as "wait for at least
one"), so a batch fetch costs T of latency whenever the queue runs dry. We
wait for one message with a long timeout (it returns the moment one arrives),
then take whatever else is already there with a `no_wait` request *without*
`expires`, which the server answers at once.

nats-py has no public call for the second request, so `Puller` sends pull
requests itself, with public calls only: an inbox of its own
(`nc.new_inbox()` + `nc.subscribe`), and a publish to
`<api prefix>.CONSUMER.MSG.NEXT.<stream>.<durable>` with that inbox as the
reply. The prefix is passed in: `$JS.API` on the trusted side, `gpubus.js`
for a user node, whose account sees JetStream through imports
(bus/node_permissions.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from bus.node_permissions import JS_API
from bus.task_cancel import cancel_and_wait
from schemas.errors import GpubusError

DRAIN_TIMEOUT_S = 0.05  # only a safety net: the server answers a no_wait request at once
EXPIRES_MARGIN_S = 0.1  # the server's 408 for an expired request comes before we stop waiting
STATUS_HEADER = "Status"
IDLE_HEARTBEAT = "100"
# Statuses that end a pull without a message, as nats-py's fetch treats
# them: 404 no messages, 408 request expired, 409 a conflict (consumer
# deleted, too many waiting pulls) that a later pull may not meet.
NO_MESSAGE_STATUSES = frozenset({"404", "408", "409"})
log = logging.getLogger("gpubus.bus.pulling")


class PullerClosed(GpubusError):
    """A pull was asked of a puller that is not open (never opened, or closed)."""

    code = "PULLER_CLOSED"


def _status(msg: Msg) -> str | None:
    return msg.headers.get(STATUS_HEADER) if msg.headers else None


class Puller:
    """Pull requests for durable pull consumers of one stream, answered on
    our own inbox: `durable` by default, any other named per request (a
    node pulls each of its priorities, the pool node each owner's share)."""

    def __init__(self, nc: NatsClient, *, stream: str, durable: str, api_prefix: str = JS_API) -> None:
        self._nc = nc
        self._next_prefix = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}."
        self._next_subject = self._next_prefix + durable
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None

    async def open(self) -> Puller:
        self._sub = await self._nc.subscribe(self._inbox)
        return self

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        try:
            await sub.unsubscribe()
        except NatsError as e:  # a closed connection took the subscription with it
            log.debug("pull inbox %s not unsubscribed: %s", self._inbox, e)

    def _subscription(self) -> Subscription:
        if self._sub is None:
            raise PullerClosed(f"no open subscription for {self._next_subject}")
        return self._sub

    async def _request(self, request: dict[str, Any], durable: str | None = None) -> None:
        subject = self._next_subject if durable is None else self._next_prefix + durable
        await self._nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)

    async def _queued(self) -> Msg | None:
        """A message that arrived after its request's reader gave up (it
        would otherwise wait out its ack_wait); stray statuses are dropped."""
        sub = self._subscription()
        while sub.pending_msgs:
            msg = await sub.next_msg(timeout=DRAIN_TIMEOUT_S)
            if _status(msg) is None:
                return msg
        return None

    async def next_message(self, wait_s: float, durable: str | None = None) -> Msg | None:
        """One message, the moment there is one; None after `wait_s`."""
        queued = await self._queued()
        if queued is not None:
            return queued
        await self._request({"batch": 1, "expires": int(wait_s * 1_000_000_000)}, durable)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s + EXPIRES_MARGIN_S
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await self._subscription().next_msg(timeout=left)
            except (TimeoutError, NatsTimeoutError):
                return None
            status = _status(msg)
            if status is None:
                return msg
            if status in NO_MESSAGE_STATUSES:
                return None
            if status != IDLE_HEARTBEAT:
                raise APIError.from_msg(msg)  # 503: no responders (the consumer's server is gone)
        return None

    async def next_batch(self, *, max_batch: int, wait_s: float, durable: str | None = None) -> list[Msg]:
        """Up to `max_batch` messages; [] when none came within `wait_s`.
        The rest are asked for only when the first says more wait behind
        it: its delivery carries the consumer's pending count, and a drain
        request answered "404 no messages" was one round trip per job, on
        the job's path, whenever jobs come one at a time (one that arrives
        just after is the next pull's)."""
        first = await self.next_message(wait_s, durable)
        if first is None:
            return []
        if max_batch <= 1 or first.metadata.num_pending == 0:
            return [first]
        return [first] + await self.take_available(max_batch - 1, durable)

    async def take_available(self, max_msgs: int, durable: str | None = None) -> list[Msg]:
        """Up to `max_msgs` messages the consumer has right now, without
        lingering: any status (404 no messages, 408 from an older request,
        503 no such consumer) ends the drain. What an earlier request left
        (a message that came after its reader gave up) comes first; stray
        statuses are dropped."""
        out: list[Msg] = []
        if (stray := await self._queued()) is not None:
            out.append(stray)  # a message of an earlier request, late: it is ours all the same
            if len(out) >= max_msgs:
                return out
        await self._request({"batch": max_msgs - len(out), "no_wait": True}, durable)
        while len(out) < max_msgs:
            try:
                msg = await self._subscription().next_msg(timeout=DRAIN_TIMEOUT_S)
            except (TimeoutError, NatsTimeoutError):
                break
            status = _status(msg)
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
        nc: NatsClient,
        *,
        durable: str,
        stream: str,
        handle: Callable[[list[Msg]], Awaitable[None]],
        max_batch: int = 64,
        wait_s: float = 5.0,
    ) -> None:
        self._puller = Puller(nc, stream=stream, durable=durable)
        self._durable = durable
        self._handle = handle
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._puller.open()
        self._task = asyncio.create_task(self._run(), name=self._durable)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self._puller.close()

    async def _run(self) -> None:
        while True:
            try:
                msgs = await self._puller.next_batch(max_batch=self._max_batch, wait_s=self._wait_s)
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
