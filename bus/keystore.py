"""API keys in KV `apikeys`: only SHA-256 of the secret is stored.

A gateway looks a key up in its mirror of the bucket (bus/key_mirror.py, kept
current by a KV watch), else in KV itself, so a revocation takes effect on
every gateway within milliseconds. Anything wrong with a key is
`Unauthorized`, never a fallback to anonymous.
"""

from __future__ import annotations

import logging
import re

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from bus.key_mirror import KeyMirror
from bus.sealing import RecordSeal, SealBroken
from schemas import codec, names, webhooks
from schemas.errors import NotFound, Unauthorized
from schemas.jobs import now
from schemas.keys import KEY_ID_HEX, ApiKeyRecord, Role, new_secret, parse_key, secret_matches
from schemas.names import Priority

log = logging.getLogger("gpubus.bus.keystore")
DAY_S = 86_400.0
KEY_ID_RE = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}$")


class KeyStore:
    def __init__(self, kv: KeyValue, seal: RecordSeal, *, js: JetStreamContext) -> None:
        self._kv = kv
        self._js = js
        self._seal = seal
        self.mirror: KeyMirror | None = None

    async def start_mirror(self, nc: NatsClient, js: JetStreamContext) -> None:
        """Serve lookups from memory from now on (a gateway's; the CLI reads KV)."""
        self.mirror = KeyMirror(nc, js, self.decode)
        await self.mirror.start()

    def rebuild_mirror(self) -> None:
        if self.mirror is not None:
            self.mirror.rebuild()

    async def stop_mirror(self) -> None:
        if self.mirror is not None:
            await self.mirror.stop()

    def _where(self, key_id: str) -> str:
        return names.kv_subject(names.APIKEYS_BUCKET, key_id)

    def _encode(self, rec: ApiKeyRecord) -> bytes:
        return self._seal.seal(self._where(rec.key_id), codec.encode_record(rec))

    async def create(
        self,
        user_id: str,
        roles: list[Role],
        *,
        description: str = "",
        expires_days: float | None = None,
        max_upload_mb: int | None = None,
        max_active_jobs: int | None = None,
        webhook_url: str | None = None,
        max_priority: Priority | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Every key gets a webhook secret (`webhook_secret(rec)` reads it
        back, for the one answer that shows it)."""
        names.validate_owner(user_id)
        full, key_id, digest = new_secret()
        created = now()
        rec = ApiKeyRecord(
            key_id=key_id,
            user_id=user_id,
            roles=sorted(set(roles)),
            secret_sha256=digest,
            description=description,
            created_at=created,
            expires_at=created + expires_days * DAY_S if expires_days else None,
            max_upload_mb=max_upload_mb,
            max_active_jobs=max_active_jobs,
            webhook_url=webhook_url,
            webhook_secret=self._seal.hide(webhooks.new_secret()),
            max_priority=max_priority,
        )
        await self._kv.create(key_id, self._encode(rec))
        return full, rec

    def webhook_secret(self, rec: ApiKeyRecord) -> str | None:
        """The key's webhook signing secret in clear, or None (a key made
        before webhooks existed, or one another seal key hid)."""
        if rec.webhook_secret is None:
            return None
        try:
            return self._seal.reveal(rec.webhook_secret)
        except SealBroken as e:
            log.error("key %s: webhook secret unreadable: %s", rec.key_id, e)
            return None

    async def new_webhook_secret(self, key_id: str) -> tuple[ApiKeyRecord, str]:
        """A fresh webhook secret for the key (the old one stops signing
        at once); returned in clear this once."""
        secret = webhooks.new_secret()
        rec = await self.get(key_id, from_kv=True)
        rec.webhook_secret = self._seal.hide(secret)
        await self._kv.put(key_id, self._encode(rec))
        return rec, secret

    async def get(self, key_id: str, *, from_kv: bool = False) -> ApiKeyRecord:
        """`from_kv`: skip the mirror (a read-modify-write starts from KV)."""
        if not KEY_ID_RE.fullmatch(key_id):  # user input becomes a KV key: check it first
            raise NotFound(f"no key {key_id[:40]!r}")
        if not from_kv and self.mirror is not None and (held := self.mirror.lookup(key_id)) is not None:
            return held
        try:
            entry = await self._kv.get(key_id)
        except (KeyNotFoundError, NotFoundError):
            raise NotFound(f"no key {key_id}") from None
        rec = self.decode(key_id, entry.value) if entry.value else None
        if rec is None:
            raise NotFound(f"no key {key_id}")
        return rec

    def decode(self, key_id: str, value: bytes) -> ApiKeyRecord | None:
        """The record stored under `key_id`, or None if no gateway wrote it
        there (unsealed, undecodable, or naming another key): as good as absent."""
        try:
            rec = codec.decode_record(self._seal.open(self._where(key_id), value), ApiKeyRecord)
        except (SealBroken, codec.DecodeError) as e:
            log.error("refusing key record %s: %s", key_id, e)
            return None
        if rec.key_id != key_id:
            log.error("refusing key record %s: it names key %s", key_id, rec.key_id)
            return None
        return rec

    async def authenticate(self, full_key: str) -> ApiKeyRecord:
        key_id, secret = parse_key(full_key)
        try:
            rec = await self.get(key_id)
        except NotFound:
            raise Unauthorized("unknown API key") from None
        if not secret_matches(secret, rec):
            raise Unauthorized("unknown API key")
        if rec.revoked_at is not None:
            raise Unauthorized("API key revoked")
        if rec.expires_at is not None and rec.expires_at < now():
            raise Unauthorized("API key expired")
        return rec

    async def key_ids(self) -> list[str]:
        """Every key id with an entry (deleted ones too; `get` skips them),
        from the stream's own per-subject state: nats-py's
        `KeyValue.keys()` decides it has seen every key from a watch's
        pending count and now and then answered "no keys" for a bucket that
        had hundreds (7 lists in 400 on a bucket being written, here; an
        admin's key listing came back empty in tests/test_priority_api.py)."""
        prefix = names.kv_subject(names.APIKEYS_BUCKET, "")
        try:
            info = await self._js.stream_info(names.kv_stream(names.APIKEYS_BUCKET), subjects_filter=f"{prefix}>")
        except NotFoundError:
            return []
        return sorted(s[len(prefix) :] for s in info.state.subjects or {})

    async def list(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        recs: list[ApiKeyRecord] = []
        for k in await self.key_ids():
            try:
                recs.append(await self.get(k))
            except NotFound:  # unsealed or deleted meanwhile (logged by get): it is nobody's key
                continue
        return [r for r in recs if user_id is None or r.user_id == user_id]

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        rec = await self.get(key_id, from_kv=True)
        if rec.revoked_at is None:
            rec.revoked_at = now()
            revision = await self._kv.put(key_id, self._encode(rec))
            if self.mirror is not None:
                self.mirror.learn(key_id, rec, revision)
        return rec
