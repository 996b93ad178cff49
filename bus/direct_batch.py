"""Batched direct gets (nats-server 2.11+): a stream's stored messages on a
subject filter, read from a sequence or a time, with no consumer made.

A consumer per read (a KV watch, an ordered consumer) costs the server a
consumer's creation and removal and the reader a round trip for each; a
batched direct get is one request answered by up to `batch` messages and
an end-of-batch status. Each answer carries `Nats-Num-Pending`, the
messages on the filter after it: a one-message read is also a count.
Used for a followed job's event history (bus/event_hub.py) and an owner's
newest job records (bus/jobstore.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bus.errors import BusError, BusUnavailable
from bus.node_permissions import JS_API

PAGE = 1024  # every request costs the server a count over the filter: fewer, larger pages
PAGE_MAX_BYTES = 4 * 1024 * 1024  # a page of large records stops at this many bytes
WAIT_S = 5.0
STATUS = "Status"
END_OF_BATCH = "204"
NOT_FOUND = "404"


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message as a direct get answers it."""

    subject: str
    seq: int
    pending: int  # messages on the filter after this one
    data: bytes
    headers: dict[str, str]


class DirectGetFailed(BusError):
    """The server answered a batched direct get (or the stream's info) with an error."""

    code = "DIRECT_GET_FAILED"


class DirectGets:
    """Batched direct gets on one stream."""

    def __init__(self, nc: NatsClient, stream: str) -> None:
        self._nc = nc
        self._subject = f"{JS_API}.DIRECT.GET.{stream}"
        self._info = f"{JS_API}.STREAM.INFO.{stream}"

    async def last_seq(self) -> int:
        """The stream's last sequence (0 when empty): where windows counted
        back from the end start."""
        try:
            reply = await self._nc.request(self._info, b"", timeout=WAIT_S)
        except (NatsTimeoutError, NoRespondersError):
            raise BusUnavailable(f"{self._info}: no answer within {WAIT_S:.0f}s") from None
        info = json.loads(reply.data)
        if "error" in info:
            raise DirectGetFailed(f"{self._info}: {info['error'].get('description')}")
        return int(info["state"]["last_seq"])

    async def first(self, subjects: str, *, seq: int = 1) -> Stored | None:
        """The first message on `subjects` from `seq`; its `pending + 1`
        counts the messages from there."""
        async with contextlib.aclosing(self.read(subjects, seq=seq, batch=1)) as answers:
            async for stored in answers:
                return stored
        return None

    async def read(self, subjects: str, *, seq: int = 1, batch: int = PAGE) -> AsyncGenerator[Stored, None]:
        """One batch: up to `batch` messages on `subjects` from `seq`, oldest first."""
        request = {"seq": seq, "next_by_subj": subjects, "batch": batch, "max_bytes": PAGE_MAX_BYTES}
        page = _Page(self._subject)
        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=page.on_answer)
        try:
            await self._nc.publish(self._subject, json.dumps(request).encode(), reply=sub.subject)
            try:
                await asyncio.wait_for(page.ended, WAIT_S)
            except TimeoutError:
                raise BusUnavailable(f"{self._subject}: no end of batch within {WAIT_S:.0f}s") from None
        finally:
            with contextlib.suppress(NatsError):  # a closed connection took it already
                await sub.unsubscribe()
        for stored in page.answers:
            yield stored

    async def read_all(
        self, subjects: str, *, seq: int = 1, before_seq: int | None = None
    ) -> AsyncGenerator[Stored, None]:
        """Every message on `subjects` from `seq`, page by page, up to the
        last stored or to `before_seq` (not included)."""
        while True:
            last: Stored | None = None
            async with contextlib.aclosing(self.read(subjects, seq=seq)) as page:
                async for stored in page:
                    if before_seq is not None and stored.seq >= before_seq:
                        return
                    last = stored
                    yield stored
            if last is None or last.pending == 0:
                return
            seq = last.seq + 1


class _Page:
    """One batched direct get's answers, gathered by its subscription's
    callback up to the end-of-batch status: a wait for each message (nats-py's
    `next_msg`) made a task per message, a fifth of a read's CPU."""

    def __init__(self, asked: str) -> None:
        self._asked = asked
        self.answers: list[Stored] = []
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_answer(self, msg: Msg) -> None:
        if self.ended.done():
            return
        headers = msg.headers or {}
        status = headers.get(STATUS)
        if status in (END_OF_BATCH, NOT_FOUND):
            self.ended.set_result(None)
        elif status is not None:
            self.ended.set_exception(DirectGetFailed(f"{self._asked}: status {status} ({headers.get('Description')})"))
        else:
            self.answers.append(
                Stored(
                    subject=headers["Nats-Subject"],
                    seq=int(headers["Nats-Sequence"]),
                    pending=int(headers.get("Nats-Num-Pending", "0")),
                    data=msg.data,
                    headers=headers,
                )
            )
