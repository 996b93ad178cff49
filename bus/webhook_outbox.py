"""A job's webhook is queued before its terminal state is committed.

`JobStore.update` calls `before_terminal(record)` for a record about to turn
terminal, before its compare-and-set: the delivery entry is added to the
record and the delivery (`WebhookTask`, carrying the body) is stored in
stream WEBHOOKS. Whichever writer ends a job (the materializer, a cancel,
the TTL timer, the fallback router, the start deadline), a committed
terminal state always has its delivery stored; a publish that fails
fails the write, which its caller retries as any NATS blip.

The other order, commit then publish, could lose a delivery to a crash in
between, since the retried write then finds the job terminal already and
changes nothing. This order may instead store a delivery for a write that
never lands (a crash just after the publish, or a compare-and-set lost to
another writer that ended the job differently): the deliverer sends only
what the record confirms (its delivery entry, for that state), so such a
phantom is dropped, never sent (bus/webhook_delivery.py).
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js import JetStreamContext

from bus.publisher import ATTEMPT_TIMEOUT_S
from bus.retry import retrying
from schemas import codec, names
from schemas.jobs import JobRecord, now
from schemas.webhooks import DELIVERIES_KEPT, WebhookDelivery, WebhookTask, delivery_id

Payload = Callable[[JobRecord], str]  # the body a terminal record is delivered as


class WebhookOutbox:
    def __init__(self, js: JetStreamContext, payload: Payload, *, give_up_after_s: float) -> None:
        self._js = js
        self._payload = payload
        self._give_up_after_s = give_up_after_s

    async def before_terminal(self, rec: JobRecord) -> None:
        """`rec` is about to be committed terminal: note and queue its delivery."""
        hook = rec.webhook
        if hook is None:
            return
        did = delivery_id(rec.job_id, rec.attempts)
        if hook.delivery(did) is None:
            entry = WebhookDelivery(id=did, job_status=rec.status.value, attempt=rec.attempts, created_at=now())
            hook.deliveries = [*hook.deliveries, entry][-DELIVERIES_KEPT:]
        task = WebhookTask(
            owner=rec.owner,
            job_id=rec.job_id,
            delivery_id=did,
            job_status=rec.status.value,
            attempt=rec.attempts,
            url=hook.url,
            key_id=hook.key_id,
            body=self._payload(rec),
            created_at=now(),
        )
        subject, data = names.webhook_subject(rec.owner, rec.job_id), codec.encode(task)
        # One message per (delivery, state): a retried write is one
        # delivery, and two writers racing to end a job differently both
        # store theirs, so the one the record confirms is never deduplicated away.
        headers = {"Nats-Msg-Id": f"{did}.{rec.status.value}"}

        async def once() -> object:
            return await self._js.publish(subject, data, timeout=ATTEMPT_TIMEOUT_S, headers=headers)

        await retrying(once, what=f"queue the webhook of {rec.job_id}", give_up_after_s=self._give_up_after_s)
