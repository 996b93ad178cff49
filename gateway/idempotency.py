"""Idempotent submission: a retried submit gets the job its first try made.

A request names its key in one of two ways:

- `Idempotency-Key: <up to 255 printable characters>` (the IETF
  httpapi draft's header, as Stripe uses it), on every submitting endpoint.
  Keys are per owner and remembered for GPUBUS_IDEMPOTENCY_TTL (a day).
- The official OpenAI clients send no key, but number their tries in
  `x-stainless-retry-count`. A try numbered 1 or more repeats an earlier
  try's exact body, so that body's fingerprint serves as the key; try 0
  takes it afresh, so the same file sent twice on purpose is two jobs.

A request's fingerprint is a SHA-256 of its method, path, query (less
`api_key`) and body as its endpoint read it (an upload: its fields and the
file's name, size and SHA-256). The same key with another fingerprint is a
422 IDEMPOTENCY_KEY_REUSED (the draft's status for it), never a silent
replay of a different request.

Order within a submission: the upload is staged first (its fingerprint is
known only then), then the key is claimed with a KV create, then the job is
queued. A request that loses the claim drops its staged upload and answers
with the winner's job, once the winner has written its record; a winner
that never does (its gateway died between claim and record) is taken over
after `abandoned_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, replace

from fastapi import Request
from pydantic import BaseModel

from bus.idempotency import Held
from gateway.state import GatewayState
from schemas.errors import IdempotencyKeyReused, InvalidInput, NotFound, Unavailable
from schemas.jobs import JobRecord, now

log = logging.getLogger("gpubus.gateway.idempotency")

HEADER = "idempotency-key"
RETRY_COUNT_HEADER = "x-stainless-retry-count"  # the official OpenAI (Stainless) clients' try counter
KEY_MAX = 255
QUERY_SECRET = "api_key"  # a credential, not part of the request's meaning (gateway/auth.py)
CLAIM_TRIES = 5
RECHECK_S = 0.2


@dataclass(frozen=True)
class Idempotency:
    owner: str
    scope: str  # method, path and query: the same key on another endpoint is another request
    key: str | None  # None: a client's retry, keyed by its body's fingerprint
    fresh: bool = False  # a first try (retry count 0): takes its fingerprint key whoever held it
    fingerprint: str = ""

    @classmethod
    def of(cls, request: Request, owner: str) -> Idempotency | None:
        """The request's key, if it names one."""
        query = sorted((k, v) for k, v in request.query_params.multi_items() if k != QUERY_SECRET)
        scope = f"{request.method} {request.url.path}?{json.dumps(query)}"
        key = request.headers.get(HEADER)
        if key is not None:
            if not 0 < len(key) <= KEY_MAX or not key.isprintable():
                raise InvalidInput(f"Idempotency-Key: 1 to {KEY_MAX} printable characters")
            return cls(owner, scope, key)
        tries = request.headers.get(RETRY_COUNT_HEADER, "")
        if tries.isdigit():
            return cls(owner, scope, None, fresh=int(tries) == 0)
        return None

    def with_body(self, body: object) -> Idempotency:
        digest = hashlib.sha256(json.dumps([self.scope, body], sort_keys=True, default=str).encode()).hexdigest()
        return replace(self, fingerprint=digest)

    @property
    def client_key(self) -> str:
        assert self.fingerprint, "with_body first"
        return self.key if self.key is not None else f"retry:{self.fingerprint}"


def of_json(request: Request, owner: str, body: BaseModel) -> Idempotency | None:
    """A JSON submission's key, fingerprinted by its validated body."""
    idem = Idempotency.of(request, owner)
    return idem.with_body(body.model_dump(mode="json")) if idem is not None else None


def abandoned_after_s(st: GatewayState) -> float:
    """A claim with no job record this long after it was made: its request
    died between the two (both publish steps may use their whole bound)."""
    return 2 * st.publisher.give_up_after_s + 10.0


async def known(st: GatewayState, idem: Idempotency | None) -> bool:
    """Whether an explicit key is held already: such a request is a replay,
    which takes no admission slot (it makes no job)."""
    if idem is None or idem.key is None:
        return False
    return await st.idempotency.get(idem.owner, idem.key) is not None


async def claim(st: GatewayState, idem: Idempotency | None, job_id: str) -> JobRecord | None:
    """None: `job_id` is the key's job (or the request has no key), queue
    it. Else the job of the key's first request: answer with that."""
    if idem is None:
        return None
    store, owner, key = st.idempotency, idem.owner, idem.client_key
    mine = Held(job_id, idem.fingerprint, now())
    if idem.fresh:
        await store.put(owner, key, mine)
        return None
    for _ in range(CLAIM_TRIES):
        if await store.create(owner, key, mine):
            return None
        held = await store.get(owner, key)
        if held is None:
            continue  # released or expired in between
        if held.fingerprint != idem.fingerprint:
            raise IdempotencyKeyReused(
                f"Idempotency-Key: already used for another request (job {held.job_id}); "
                "a retry must repeat the same request, a new request needs a new key"
            )
        rec = await _job_of(st, idem, held)
        if rec is not None:
            log.info("job %s: submission replayed (idempotency key)", rec.job_id, extra={"job_id": rec.job_id})
            return rec
        if await store.replace(owner, key, held, mine):
            return None
    raise Unavailable("Idempotency-Key: contended; retry shortly")


async def _job_of(st: GatewayState, idem: Idempotency, held: Held) -> JobRecord | None:
    """The holder's job once its record exists; None if the holder gave the
    key up, or abandoned it."""
    deadline = held.at + abandoned_after_s(st)
    while True:
        with contextlib.suppress(NotFound):
            rec, _ = await st.jobs.get(idem.owner, held.job_id)
            return rec
        if now() > deadline:
            return None
        await asyncio.sleep(RECHECK_S)
        if await st.idempotency.get(idem.owner, idem.client_key) != held:
            return None


async def release(st: GatewayState, idem: Idempotency | None, job_id: str) -> None:
    """After a failed submission: give the key up unless its job exists after all."""
    if idem is None or not idem.fingerprint:
        return
    try:
        with contextlib.suppress(NotFound):
            await st.jobs.get(idem.owner, job_id)
            return
        await st.idempotency.release(idem.owner, idem.client_key, job_id)
    except Exception as e:  # the bus away: the claim is taken over once abandoned
        log.warning("job %s: idempotency key not released (%r)", job_id, e)
