"""How every gpubus pull loop asks JetStream for messages.

`fetch(n>1, timeout=T)` on an idle consumer holds its request open for the
whole T even after the first message arrives, so latency would be T. We wait
for one message with a long timeout (it returns the moment one arrives), then
take whatever else is already there without waiting.
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

DRAIN_TIMEOUT_S = 0.05


async def next_batch(psub, *, max_batch: int, wait_s: float) -> list[Msg]:
    """Up to `max_batch` messages; [] when none came within `wait_s`."""
    try:
        msgs = await psub.fetch(1, timeout=wait_s)
    except (NatsTimeoutError, asyncio.TimeoutError):
        return []
    if max_batch > 1:
        try:
            msgs += await psub.fetch(max_batch - 1, timeout=DRAIN_TIMEOUT_S)
        except (NatsTimeoutError, asyncio.TimeoutError):
            pass
    return msgs
