"""Idempotency keys at rest: KV `idempotency`, one entry per (owner, key).

An entry says which job a key's first request made, and a fingerprint of
that request. The claim is a KV create, so of two requests with the same
key exactly one wins, whichever gateway each reached; the other reads the
winner's entry. Entries go with the bucket's TTL (GPUBUS_IDEMPOTENCY_TTL).
Sealed like job records (bus/sealing.py): only gateways write them, and
nodes cannot reach the bucket at all (bus/node_permissions.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from bus.sealing import RecordSeal, SealBroken
from schemas import names


@dataclass(frozen=True)
class Held:
    """Who holds a key: the job its first request made, and that request's fingerprint."""

    job_id: str
    fingerprint: str
    at: float
    revision: int = 0


def kv_key(owner: str, client_key: str) -> str:
    return names.idempotency_key(owner, hashlib.sha256(client_key.encode()).hexdigest())


class IdempotencyStore:
    def __init__(self, kv: KeyValue, seal: RecordSeal) -> None:
        self._kv = kv
        self._seal = seal

    def _encode(self, key: str, held: Held) -> bytes:
        data = json.dumps({"job_id": held.job_id, "fingerprint": held.fingerprint, "at": held.at}).encode()
        return self._seal.seal(names.kv_subject(names.IDEMPOTENCY_BUCKET, key), data)

    async def get(self, owner: str, client_key: str) -> Held | None:
        """The entry, or None (never written, expired, released, or not
        sealed by a gateway: as good as absent)."""
        key = kv_key(owner, client_key)
        try:
            entry = await self._kv.get(key)
        except (KeyNotFoundError, KeyDeletedError, NotFoundError):
            return None
        if not entry.value:
            return None
        try:
            raw = json.loads(self._seal.open(names.kv_subject(names.IDEMPOTENCY_BUCKET, key), entry.value))
            return Held(str(raw["job_id"]), str(raw["fingerprint"]), float(raw["at"]), entry.revision or 0)
        except (SealBroken, ValueError, KeyError, TypeError):
            return None

    async def create(self, owner: str, client_key: str, held: Held) -> bool:
        """Take the key for `held`, unless somebody holds it (False)."""
        key = kv_key(owner, client_key)
        try:
            await self._kv.create(key, self._encode(key, held))
        except KeyWrongLastSequenceError:
            return False
        return True

    async def put(self, owner: str, client_key: str, held: Held) -> None:
        """Take the key whoever held it (a fresh first attempt)."""
        key = kv_key(owner, client_key)
        await self._kv.put(key, self._encode(key, held))

    async def replace(self, owner: str, client_key: str, old: Held, new: Held) -> bool:
        """Take the key from `old` (an abandoned claim) unless it changed since."""
        key = kv_key(owner, client_key)
        try:
            await self._kv.update(key, self._encode(key, new), last=old.revision)
            return True
        except KeyWrongLastSequenceError:
            return False

    async def release(self, owner: str, client_key: str, job_id: str) -> None:
        """Give the key up if `job_id` still holds it (its request failed
        before a job was queued), so a retry starts clean."""
        held = await self.get(owner, client_key)
        if held is None or held.job_id != job_id:
            return
        try:
            await self._kv.delete(kv_key(owner, client_key), last=held.revision)
        except KeyWrongLastSequenceError:
            pass  # somebody else's by now
