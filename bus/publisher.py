"""Publishing jobs to JetStream without ever losing an accepted one.

Every attempt of a job has one `Nats-Msg-Id`, so retrying a publish whose
PubAck was lost (NATS restart, leader change) is de-duplicated by the stream.
We retry up to `publish_timeout`, then raise `BusUnavailable` (HTTP 503 with
Retry-After): the client was never told "accepted", so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import ConnectionClosedError, NoRespondersError, TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from bus.errors import BusUnavailable
from schemas import codec, names
from schemas.jobs import JobMessage

log = logging.getLogger("gpubus.bus.publisher")

ATTEMPT_TIMEOUT_S = 2.0
TRANSIENT = (NatsTimeoutError, asyncio.TimeoutError, NoRespondersError, NoStreamResponseError, ConnectionClosedError)


async def publish_retrying(
    js: JetStreamContext, subject: str, payload: bytes, *, msg_id: str, give_up_after_s: float
) -> int:
    """Returns the stream sequence of the stored message."""
    deadline = time.monotonic() + give_up_after_s
    delay = 0.1
    while True:
        try:
            ack = await js.publish(subject, payload, timeout=ATTEMPT_TIMEOUT_S, headers={"Nats-Msg-Id": msg_id})
            return ack.seq
        except TRANSIENT + (APIError,) as e:
            if isinstance(e, APIError) and (e.code or 0) < 500 and e.code != 503:
                raise
            if time.monotonic() + delay > deadline:
                raise BusUnavailable(f"could not publish {msg_id}: {e!r}") from e
            log.warning("publish of %s failed (%r); retrying in %.1fs", msg_id, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class JobPublisher:
    def __init__(self, js: JetStreamContext, *, give_up_after_s: float) -> None:
        self._js = js
        self._give_up_after_s = give_up_after_s

    async def publish(self, job: JobMessage) -> int:
        return await publish_retrying(
            self._js,
            names.job_subject(job.queue_owner, job.lane, job.kind),
            codec.encode(job),
            msg_id=names.msg_id(job.job_id, job.lane, job.attempt),
            give_up_after_s=self._give_up_after_s,
        )
