"""Reading what is on the bus, for assertions (a real connection, no mocks)."""

from __future__ import annotations

import asyncio
from collections import Counter

import nats

from schemas import codec, names
from schemas.events import JobEvent


async def _events(nats_url: str, owner: str) -> list[JobEvent]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(names.EVENTS_STREAM, subjects_filter=f"events.{owner}.>")
        total = sum((info.state.subjects or {}).values())
        sub = await js.subscribe(f"events.{owner}.>", ordered_consumer=True)
        out = []
        while len(out) < total:
            msg = await sub.next_msg(timeout=5)
            out.append(codec.decode(msg.data, JobEvent))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def events(nats_url: str, owner: str) -> list[JobEvent]:
    return asyncio.run(_events(nats_url, owner))


def terminal_counts(nats_url: str, owner: str) -> Counter:
    """job id -> number of terminal events any node published for it."""
    return Counter(e.job_id for e in events(nats_url, owner) if e.terminal)
