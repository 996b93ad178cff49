"""API keys: the format of the secret and the record stored (hash only)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from enum import StrEnum

from pydantic import BaseModel

from schemas.errors import Unauthorized
from schemas.names import Priority

KEY_PREFIX = "gpb_"
KEY_ID_HEX = 16
SECRET_BYTES = 32  # 256 bits
_KEY_RE = re.compile(rf"^{KEY_PREFIX}([0-9a-f]{{{KEY_ID_HEX}}})_([A-Za-z0-9_-]{{43}})$")


class Role(StrEnum):
    USER = "user"  # submits jobs
    NODE = "node"  # runs nodes for its owner


class ApiKeyRecord(BaseModel):
    key_id: str
    user_id: str
    roles: list[Role]
    secret_sha256: str
    description: str = ""
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    # Per-key limits set by the admin; None = the gateway's defaults.
    max_upload_mb: int | None = None
    max_active_jobs: int | None = None
    # Completion webhooks (schemas/webhooks.py): the URL every job of this
    # key reports to unless it names its own, and the secret that signs
    # them, as `RecordSeal.hide` stores it (shown in full once, when made).
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # The highest priority this key may ask for (None: any); a request above
    # it is refused (403 PRIORITY_NOT_ALLOWED), an endpoint's default is
    # lowered to it.
    max_priority: Priority | None = None


def new_secret() -> tuple[str, str, str]:
    """Returns (full key shown once, key id, sha256 hex of the secret part)."""
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(full_key: str) -> tuple[str, str]:
    """Returns (key id, secret); anything malformed is simply unauthorized."""
    m = _KEY_RE.fullmatch(full_key.strip())
    if not m:
        raise Unauthorized("malformed API key")
    return m.group(1), m.group(2)


def secret_matches(secret: str, record: ApiKeyRecord) -> bool:
    return hmac.compare_digest(hash_secret(secret), record.secret_sha256)
