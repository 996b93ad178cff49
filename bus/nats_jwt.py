"""NATS JWTs signed with nkeys: just what auth callout needs.

A NATS JWT is `base64url(header).base64url(claims).base64url(ed25519 sig)`,
with header `{"typ":"JWT","alg":"ed25519-nkey"}` and a `jti` that is the
base32 SHA-256 of the claims. The server signs its authorization requests
with its own key (`iss`, an `N...` key) and checks our responses against the
account key configured as the callout issuer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import nkeys
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from schemas.errors import Unauthorized

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account signing key (`SA...`), e.g. for `gpubus up`."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def public_key(seed: str) -> str:
    key: bytes = nkeys.from_seed(seed.encode()).public_key
    return key.decode()


def encode(claims: dict[str, Any], seed: str) -> str:
    kp = nkeys.from_seed(seed.encode())
    body = dict(claims, jti="")
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(kp.sign(signing_input.encode()))}"


def _raw_public(key: str) -> bytes:
    """The 32 raw bytes of an `N...`/`A...` public nkey (prefix + key + crc16)."""
    raw = base64.b32decode(key + "=" * (-len(key) % 8))
    return raw[1:-2]


def decode_verified(token: str) -> dict[str, Any]:
    """Claims of a JWT signed by the key in its own `iss` (the server's)."""
    try:
        header_b64, claims_b64, sig_b64 = token.split(".")
        claims: dict[str, Any] = json.loads(_unb64(claims_b64))
        VerifyKey(_raw_public(claims["iss"])).verify(f"{header_b64}.{claims_b64}".encode(), _unb64(sig_b64))
    except (ValueError, KeyError, BadSignatureError) as e:
        raise Unauthorized(f"bad authorization request: {type(e).__name__}") from e
    return claims
