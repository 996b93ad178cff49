"""Connecting to NATS with the reconnect policy every gpubus process wants."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from bus.tls import UntrustedCertificate, require_secure

log = logging.getLogger("gpubus.bus.connection")
AUTH_REFUSALS_FINAL = 3


async def connect(
    servers: list[str],
    *,
    name: str,
    on_reconnect: Callable[[], None] | None = None,
    on_closed: Callable[[], None] | None = None,
    tls: ssl.SSLContext | None = None,
    allow_insecure: bool = False,
    **auth: Any,
) -> NatsClient:
    """Reconnect forever: a node or gateway outlives a NATS restart or a
    leader change; JetStream redelivery covers what was in flight.
    With `tls`, the handshake comes before anything else (bus/tls.py);
    without, only loopback servers unless `allow_insecure`."""
    require_secure(servers, encrypted=tls is not None, allow_insecure=allow_insecure, what="NATS server")

    refusals = 0
    untrusted: ssl.SSLCertVerificationError | None = None
    connecting: asyncio.Future[NatsClient] | None = None

    async def on_error(e: Exception) -> None:
        """NATS refusing our credentials again and again (a revoked key) is
        final for this process; nats-py would retry forever. So is a server
        whose certificate our CA did not sign: retrying cannot fix that, and
        it may be someone in the middle."""
        nonlocal refusals, untrusted
        log.warning("nats error (%s): %s", name, e)
        if isinstance(e, ssl.SSLCertVerificationError):
            untrusted = e
            if connecting is not None and not connecting.done():
                connecting.cancel()
            elif on_closed is not None:
                on_closed()
        if "authorization violation" in str(e).lower():
            refusals += 1
            if refusals >= AUTH_REFUSALS_FINAL and on_closed is not None:
                log.error("nats refused %s's credentials %d times in a row; giving up", name, refusals)
                on_closed()

    async def on_disconnect() -> None:
        log.warning("nats disconnected (%s)", name)

    async def reconnected() -> None:
        nonlocal refusals
        refusals = 0
        log.info("nats reconnected (%s)", name)
        if on_reconnect is not None:
            on_reconnect()

    async def closed() -> None:
        log.info("nats connection closed (%s)", name)
        if on_closed is not None:
            on_closed()

    connecting = asyncio.ensure_future(
        nats.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=reconnected,
            closed_cb=closed,
            **({"tls": tls, "tls_handshake_first": True} if tls is not None else {}),
            **{k: v for k, v in auth.items() if v is not None},
        )
    )
    try:
        return await connecting
    except asyncio.CancelledError:
        if untrusted is None:
            raise
        raise UntrustedCertificate(f"NATS server certificate not trusted ({name}): {untrusted}") from untrusted


async def close(nc: NatsClient, *, flush_timeout_s: float = 5.0) -> None:
    """Flush what we published, then close. Not `drain()`: nats-py's drain
    waits on pull subscriptions' unconsumed status messages and times out
    (30 s) on every shutdown; our callers have already settled their work."""
    if nc.is_closed:
        return
    try:
        if nc.is_connected:
            await nc.flush(timeout=int(max(1, flush_timeout_s)))
    except Exception as e:
        log.warning("flush before close failed: %s", e)
    try:
        await nc.close()
    except OSError as e:  # the peer is gone already; closed either way
        log.debug("close: %s", e)
