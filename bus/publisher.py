"""Publishing jobs to JetStream without ever losing an accepted one.

Every attempt of a job has one `Nats-Msg-Id`, so retrying a publish whose
PubAck was lost (NATS restart, leader change) is de-duplicated by the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import sealing
from bus.retry import retrying
from bus.sealing import RecordSeal
from schemas import codec, names
from schemas.jobs import JobMessage
from schemas.names import LaneQueue

ATTEMPT_TIMEOUT_S = 2.0


class JobPublisher:
    """`ensure_queue` makes the consumer of a job's queue before its first
    job is published there: high, low and pool-share consumers are made
    when first used, and a message no consumer matches would wait for ever
    (`topology.QueueMaker`, which remembers what it made)."""

    def __init__(
        self,
        js: JetStreamContext,
        seal: RecordSeal,
        *,
        give_up_after_s: float,
        ensure_queue: Callable[[LaneQueue], Awaitable[None]],
    ) -> None:
        self._js = js
        self._seal = seal
        self._ensure_queue = ensure_queue
        self.give_up_after_s = give_up_after_s  # callers bound their own steps of queueing by it too

    async def publish(self, job: JobMessage) -> int:
        """Returns the stream sequence of the stored message."""
        ensure, queue = self._ensure_queue, job.queue
        await retrying(lambda: ensure(queue), what=f"make {queue.consumer}", give_up_after_s=self.give_up_after_s)
        subject = names.job_subject(job.queue_owner, job.lane, job.kind, job.owner, job.priority)
        payload = codec.encode(job)
        headers = {"Nats-Msg-Id": names.msg_id(job.job_id, job.lane, job.attempt)}
        if self._seal.enabled:
            headers[sealing.HEADER] = self._seal.tag(subject, payload)

        async def once() -> int:
            ack = await self._js.publish(subject, payload, timeout=ATTEMPT_TIMEOUT_S, headers=headers)
            return ack.seq

        return await retrying(once, what=f"publish {headers['Nats-Msg-Id']}", give_up_after_s=self.give_up_after_s)

    async def withdraw(self, seq: int) -> bool:
        """Delete a queued job's message before a node takes it. False when
        it is gone already: a node has it (the cancel subject stops it) or
        it is done."""
        try:
            await self._js.delete_msg(names.JOBS_STREAM, seq)
        except NotFoundError:
            return False
        return True
