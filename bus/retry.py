"""Riding out a NATS restart or a leader election.

Operations that must not fail just because NATS blinked (publishing an
accepted job, writing its record) are retried with backoff for a bounded time;
past it they raise `BusUnavailable` (HTTP 503 with Retry-After), so a client
is never told "accepted" for a job that was not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import ConnectionClosedError, NoRespondersError, StaleConnectionError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from bus.errors import BusUnavailable, CasConflict

log = logging.getLogger("gpubus.bus.retry")

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    NatsTimeoutError,
    asyncio.TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ConnectionClosedError,
    StaleConnectionError,
    ServiceUnavailableError,
)


def is_transient(e: BaseException) -> bool:
    if isinstance(e, TRANSIENT_ERRORS):
        return True
    # JetStream answers 503/500 while a stream has no leader (election).
    # nats-py's KV errors (KeyWrongLastSequenceError, KeyNotFoundError) skip
    # APIError.__init__ and have no `code` at all.
    return isinstance(e, APIError) and (getattr(e, "code", None) or 0) >= 500


def is_retryable(e: BaseException) -> bool:
    """Worth another delivery of the message that caused it: NATS blinked,
    a CAS race was lost too often, or the bus stayed away past a bound.
    Anything else (a record over max_payload, a bug) fails the same way on
    every delivery, so the message is termed rather than redelivered for ever."""
    return is_transient(e) or isinstance(e, (CasConflict, BusUnavailable))


async def retrying(op: Callable[[], Awaitable[T]], *, what: str, give_up_after_s: float) -> T:
    deadline = time.monotonic() + give_up_after_s
    delay = 0.1
    while True:
        try:
            return await op()
        except Exception as e:
            if not is_transient(e):
                raise
            if time.monotonic() + delay > deadline:
                raise BusUnavailable(f"{what}: NATS unavailable ({type(e).__name__})") from e
            log.warning("%s failed (%r); retrying in %.1fs", what, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
