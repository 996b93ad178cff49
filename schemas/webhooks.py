"""Completion webhooks: what a job keeps of its webhook, the queued delivery,
and the Standard Webhooks signature (https://www.standardwebhooks.com).

Every terminal state of a job with a `webhook_url` is POSTed there once it
is committed: a JSON body `{"type": "job.<status>", "timestamp", "data":
<the job record>}` with the headers `webhook-id` (the same on every retry
of one delivery), `webhook-timestamp` (Unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`
under the submitting API key's secret `whsec_<base64>`. The delivery
machinery is bus/webhook_outbox.py and bus/webhook_delivery.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from enum import StrEnum

from pydantic import BaseModel, Field

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # 192 bits, as most senders of the spec use
URL_MAX = 4096
ERROR_MAX = 500
DELIVERIES_KEPT = 10  # a job retried again and again keeps its last deliveries only
# The headers of the spec, lower case as HTTP/2 sends them.
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `<msg_id>.<timestamp>.<body>`."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def delivery_id(job_id: str, attempt: int) -> str:
    """The `webhook-id` of a job's terminal state: one per attempt, since a
    job ends at most once per attempt (a retry is the next attempt)."""
    return f"{job_id}.{attempt}"


class DeliveryState(StrEnum):
    PENDING = "pending"  # queued, or between attempts
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up: refused address, no secret, or retried past GPUBUS_WEBHOOK_RETRY_FOR


class WebhookDelivery(BaseModel):
    """One terminal state's delivery, as `GET /api/v1/jobs/{id}` shows it."""

    id: str = Field(max_length=128)
    job_status: str = Field(max_length=32)  # the terminal status it reports
    attempt: int = Field(ge=1)  # the job's attempt that ended
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0  # POSTs made
    last_status: int | None = None  # the receiver's HTTP status on the last POST
    last_error: str | None = Field(None, max_length=ERROR_MAX)
    created_at: float
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None


class Webhook(BaseModel):
    """A job's webhook: where, whose secret signs it, and its deliveries."""

    url: str = Field(max_length=URL_MAX)
    key_id: str = Field(max_length=64)
    deliveries: list[WebhookDelivery] = Field(default_factory=list)

    def delivery(self, delivery_id: str) -> WebhookDelivery | None:
        return next((d for d in self.deliveries if d.id == delivery_id), None)


class WebhookTask(BaseModel):
    """A delivery waiting in stream WEBHOOKS: the body is fixed when the
    state is committed, so every retry sends the same bytes."""

    owner: str
    job_id: str
    delivery_id: str
    job_status: str
    attempt: int = Field(ge=1)
    url: str = Field(max_length=URL_MAX)
    key_id: str
    body: str
    created_at: float
