"""Stopping a background task so that it really stops.

`task.cancel()` then waiting is not enough on Python 3.11 (the images' Python;
3.12 rewrote wait_for): `asyncio.wait_for`
(under nats-py's `next_msg`, `request` and KV watches) returns its result
instead of raising CancelledError when what it awaits completes in the same
loop step as the cancel. A `while True` loop then goes round again, with the
cancel spent, and whoever waits for it waits for ever. Seen in CI: a gateway
given SIGTERM kept its fallback loop running until it was killed 15 s later
(the start-deadline scanner, already stopped, moved nothing meanwhile). So
the cancel is repeated until the task is done.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 0.25  # a cancel's grace (for the task's own clean-up) before it is sent again


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` (again, while it goes on) and return once it is done.
    Whatever it ended with, a result, an exception or the cancel, is
    consumed: a background task's failure was its own to log."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn that nobody did
