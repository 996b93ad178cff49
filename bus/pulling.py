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

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

DRAIN_TIMEOUT_S = 0.05  # only a safety net: the server answers a no_wait request at once
STATUS_HEADER = "Status"
IDLE_HEARTBEAT = "100"


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
