"""What the trusted side writes carries an HMAC that only it can make.

Key records, job records and job messages are written by gateways alone.
Nodes are walled off from them by their NATS account (bus/node_permissions.py);
this seal is the second wall: should anything else ever get bytes onto those
subjects (a misconfigured deploy, a server bug, a leaked service password
used by a tool that does not hold the seal key), readers refuse them instead
of trusting them.

The tag covers the KV key or subject too, so a sealed record cannot be
replayed under another key (one user's key record as another's). Records
stay one JSON object for operators (`nats kv get … | jq`): the tag is its
last member, `"_seal"`, over the bytes without it. Job messages carry it in
a header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from bus.settings import Settings
from schemas.errors import GpubusError

log = logging.getLogger("gpubus.bus.sealing")

TAG_MEMBER = b',"_seal":"'
TAG_END = b'"}'
HEADER = "Gpubus-Seal"
_CONTEXT = b"gpubus record seal v1"
_BOX_CONTEXT = b"gpubus secret box v1"
PLAIN, BOXED = "plain:", "box:"  # how `hide` stored a secret


class SealBroken(GpubusError):
    """Stored bytes lack the trusted side's seal, or it does not match."""

    code = "SEAL_BROKEN"


class RecordSeal:
    """HMAC-SHA256 over (where, bytes). `key=None` is the unsealed mode of a
    NATS without authorization, where every client is trusted anyway."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    @classmethod
    def from_secret(cls, secret: str | None) -> RecordSeal:
        """Derived, so every gateway holding the same secret agrees on it."""
        if not secret:
            return cls(None)
        return cls(hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest())

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordSeal:
        """Every process of the trusted side (gateways, the shared-pool node)
        holds the admin token, and nodes never do; an explicit state key
        lets the admin token rotate without unsealing every record."""
        secret = settings.state_key or settings.admin_token
        return cls.from_secret(secret.get_secret_value() if secret else None)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def tag(self, where: str, data: bytes) -> str:
        assert self._key is not None
        return hmac.new(self._key, where.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    def seal(self, where: str, data: bytes) -> bytes:
        """`data` is a non-empty JSON object (a record)."""
        if self._key is None:
            return data
        assert data.startswith(b"{") and data.endswith(b"}") and data != b"{}", "records are JSON objects"
        return data[:-1] + TAG_MEMBER + self.tag(where, data).encode() + TAG_END

    def open(self, where: str, stored: bytes) -> bytes:
        """The record's bytes as sealed, or SealBroken."""
        at = stored.rfind(TAG_MEMBER)
        if at < 0 or not stored.endswith(TAG_END):
            if self._key is None:
                return stored
            raise SealBroken(f"{where}: not sealed by a gateway")
        data = stored[:at] + b"}"
        self.check(where, data, stored[at + len(TAG_MEMBER) : -len(TAG_END)].decode(errors="replace"))
        return data

    def check(self, where: str, data: bytes, tag: str | None) -> None:
        if self._key is None:
            return
        if not tag or not hmac.compare_digest(tag, self.tag(where, data)):
            raise SealBroken(f"{where}: seal does not match")

    def hide(self, secret: str) -> str:
        """A secret the trusted side must read back (a key's webhook
        signing secret), as it is stored in a record: encrypted (NaCl
        secretbox, under a key derived from the seal's) so a copy of the
        bucket does not hand it out; as it is in the unsealed mode."""
        if self._key is None:
            return PLAIN + secret
        return BOXED + base64.b64encode(self._box().encrypt(secret.encode())).decode()

    def reveal(self, stored: str) -> str:
        """The secret `hide` stored, or SealBroken."""
        if stored.startswith(PLAIN):
            return stored[len(PLAIN) :]
        if not stored.startswith(BOXED) or self._key is None:
            raise SealBroken("a hidden secret this gateway cannot read (another seal key?)")
        try:
            return self._box().decrypt(base64.b64decode(stored[len(BOXED) :])).decode()
        except (CryptoError, ValueError) as e:
            raise SealBroken(f"a hidden secret does not open: {e}") from e

    def _box(self) -> SecretBox:
        assert self._key is not None
        return SecretBox(hmac.new(self._key, _BOX_CONTEXT, hashlib.sha256).digest())
