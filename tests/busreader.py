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


async def _input_objects(nats_url: str, owner: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        store = await nc.jetstream().object_store(names.files_bucket(owner))
        try:
            infos = await store.list()
        except Exception as e:  # nats-py raises NotFoundError for an empty store
            if type(e).__name__ != "NotFoundError":
                raise
            return []
        return sorted(i.name for i in infos if i.name.startswith("in/") and not i.deleted)
    finally:
        await nc.close()


def input_objects(nats_url: str, owner: str) -> list[str]:
    """The staged inputs in an owner's bucket (`in/<job_id>/<filename>`)."""
    return asyncio.run(_input_objects(nats_url, owner))
