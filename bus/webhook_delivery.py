"""Delivering completion webhooks from stream WEBHOOKS, at least once.

The gateways share one durable consumer, `webhooks`, like the TTL timers
(bus/job_ttl.py): a delivery that fails is naked with a delay that doubles
each time (GPUBUS_WEBHOOK_BACKOFF, at most GPUBUS_WEBHOOK_BACKOFF_MAX), so
the server keeps the retry schedule and any gateway, restarted or not,
gets the delivery back when it is due. Past GPUBUS_WEBHOOK_RETRY_FOR
(a day and more) it is given up. A gateway killed mid-attempt leaves the
message unacked: it comes back after the consumer's ack_wait.

Each attempt is signed afresh (the timestamp is the attempt's; the
`webhook-id` and the body are the delivery's, the same on every retry),
and its outcome is written to the job record's delivery entry before the
message is settled, so `GET /api/v1/jobs/{id}` shows the attempts, the
last HTTP status or error, and when the next try is due.

What is sent is only what the record confirms: the delivery entry the
outbox added in the same write as the terminal state (bus/webhook_outbox.py).
A message whose entry is not there yet waits briefly for the write; one the
record contradicts (that write never landed) is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from bus import webhook_http
from bus.jobstore import JobStore
from bus.metrics import GatewayMetrics
from bus.pulling import DurableLoop
from bus.retry import is_retryable
from schemas import codec, names
from schemas.errors import NotFound
from schemas.jobs import JobRecord, now
from schemas.webhooks import ERROR_MAX, DeliveryState, WebhookDelivery, WebhookTask, signed_headers

log = logging.getLogger("gpubus.bus.webhooks")

FETCH_BATCH = 16  # deliveries in flight at once per gateway
UNCOMMITTED_RETRY_S = 1.0
UNCOMMITTED_WAIT_S = 600.0  # a terminal write still not landed after this is one that never will
BUS_RETRY_S = 2.0

SecretOf = Callable[[str], Awaitable[str | None]]  # key id -> its webhook secret


@dataclass(frozen=True)
class Policy:
    timeout_s: float
    backoff_s: float
    backoff_max_s: float
    retry_for_s: float
    allow_private: bool

    def delay(self, attempts: int) -> float:
        """Before the retry after `attempts` failed POSTs."""
        return float(min(self.backoff_s * 2 ** min(attempts - 1, 40), self.backoff_max_s))


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: `state` is where the delivery goes next."""

    state: DeliveryState
    metric: str  # delivered | retry | failed | refused
    status: int | None = None
    error: str | None = None


class WebhookDeliverer:
    def __init__(
        self, nc: NatsClient, jobs: JobStore, metrics: GatewayMetrics, *, secret_of: SecretOf, policy: Policy
    ) -> None:
        self._jobs = jobs
        self._metrics = metrics
        self._secret_of = secret_of
        self._policy = policy
        self._http = httpx.AsyncClient(timeout=policy.timeout_s, trust_env=False)
        self._loop = DurableLoop(
            nc, durable=names.WEBHOOK_CONSUMER, stream=names.WEBHOOKS_STREAM, handle=self._handle, max_batch=FETCH_BATCH
        )

    async def start(self) -> None:
        await self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        await self._http.aclose()

    async def _handle(self, msgs: list[Msg]) -> None:
        await asyncio.gather(*(self._handle_msg(m) for m in msgs))

    async def _handle_msg(self, msg: Msg) -> None:
        """The one place a delivery message is settled."""
        try:
            task = codec.decode(msg.data, WebhookTask)
        except codec.DecodeError as e:
            log.error("undecodable webhook delivery on %s dropped: %s", msg.subject, e)
            await msg.term()
            return
        try:
            delay = await self._attempt(task)
        except Exception as e:
            if is_retryable(e):
                log.warning("webhook %s not settled (%s); will retry", task.delivery_id, e)
                await msg.nak(delay=BUS_RETRY_S)
                return
            log.error("webhook %s failed for good (%s: %s); dropped", task.delivery_id, type(e).__name__, e)
            await msg.term()
            return
        if delay is None:
            await msg.ack()
        else:
            await msg.nak(delay=delay)

    async def _attempt(self, task: WebhookTask) -> float | None:
        """None when the delivery is settled, else the seconds until the next try."""
        try:
            rec, _ = await self._jobs.get(task.owner, task.job_id)
        except NotFound:
            self._dropped(task, "its job is gone")
            return None
        entry = rec.webhook.delivery(task.delivery_id) if rec.webhook else None
        if entry is None or entry.job_status != task.job_status:
            return self._unconfirmed(task, rec, entry)
        if entry.state != DeliveryState.PENDING:
            return None  # settled by an attempt whose ack was lost
        outcome = await self._send(task, entry.attempts + 1)
        updated = await self._record(task, outcome) or entry
        self._metrics.webhook_deliveries.labels(outcome=outcome.metric).inc()
        log.info(
            "webhook %s of job %s to %s: %s (attempt %d%s)",
            task.delivery_id,
            task.job_id,
            urlsplit(task.url).hostname,  # not the whole URL: it may carry a token
            outcome.metric,
            updated.attempts,
            f", {outcome.error or outcome.status}" if outcome.state != DeliveryState.DELIVERED else "",
        )
        if updated.state != DeliveryState.PENDING:
            return None
        return self._policy.delay(updated.attempts)

    def _unconfirmed(self, task: WebhookTask, rec: JobRecord, entry: WebhookDelivery | None) -> float | None:
        """The record does not (yet) show this delivery for this state."""
        pending_write = entry is None and rec.attempts == task.attempt and not rec.terminal
        if pending_write and time.time() - task.created_at < UNCOMMITTED_WAIT_S:
            return UNCOMMITTED_RETRY_S
        self._dropped(task, f"the record shows it {'differently' if entry else 'not at all'}")
        return None

    def _dropped(self, task: WebhookTask, why: str) -> None:
        log.warning("webhook %s (%s) dropped: %s", task.delivery_id, task.job_status, why)
        self._metrics.webhook_deliveries.labels(outcome="dropped").inc()

    async def _send(self, task: WebhookTask, attempt_no: int) -> Outcome:
        secret = await self._secret_of(task.key_id)
        if secret is None:
            return Outcome(DeliveryState.FAILED, "failed", error=f"key {task.key_id} has no webhook secret")
        body = task.body.encode()
        headers = signed_headers(secret, task.delivery_id, int(time.time()), body)
        try:
            status = await webhook_http.post(
                self._http, task.url, body, headers, allow_private=self._policy.allow_private
            )
        except webhook_http.WebhookRefused as e:
            return Outcome(DeliveryState.FAILED, "refused", error=f"refused: {e.message}")
        except webhook_http.WebhookUnreachable as e:
            return self._failed_attempt(task, attempt_no, None, e.message)
        if 200 <= status < 300:
            return Outcome(DeliveryState.DELIVERED, "delivered", status=status)
        why = "a redirect, not followed" if 300 <= status < 400 else f"HTTP {status}"
        return self._failed_attempt(task, attempt_no, status, why)

    def _failed_attempt(self, task: WebhookTask, attempt_no: int, status: int | None, why: str) -> Outcome:
        if time.time() + self._policy.delay(attempt_no) - task.created_at > self._policy.retry_for_s:
            gave_up = f"{why}; given up after {attempt_no} attempts over {self._policy.retry_for_s / 3600:.3g} h"
            return Outcome(DeliveryState.FAILED, "failed", status=status, error=gave_up)
        return Outcome(DeliveryState.PENDING, "retry", status=status, error=why)

    async def _record(self, task: WebhookTask, outcome: Outcome) -> WebhookDelivery | None:
        """The attempt, written into the record's delivery entry."""
        at = now()

        def mutate(rec: JobRecord) -> JobRecord | None:
            entry = rec.webhook.delivery(task.delivery_id) if rec.webhook else None
            if entry is None or entry.state != DeliveryState.PENDING:
                return None
            entry.attempts += 1
            entry.state = outcome.state
            entry.last_status = outcome.status
            entry.last_error = outcome.error[:ERROR_MAX] if outcome.error else None
            entry.last_attempt_at = at
            entry.delivered_at = at if outcome.state == DeliveryState.DELIVERED else None
            pending = outcome.state == DeliveryState.PENDING
            entry.next_attempt_at = at + self._policy.delay(entry.attempts) if pending else None
            return rec

        rec = await self._jobs.update(task.owner, task.job_id, mutate)
        return rec.webhook.delivery(task.delivery_id) if rec.webhook else None
