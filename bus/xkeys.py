"""Curve (x25519) nkeys and the sealing NATS uses to encrypt auth callout.

With `auth_callout { xkey: <X... public key> }` the server seals every
authorization request to that key and puts its own one-time curve key in the
`Nats-Server-Xkey` header; it accepts only a reply sealed back to that key.
So neither the request (the client's token: a node's API key) nor the grant
is readable by anyone else on the account that can see `$SYS.REQ.USER.AUTH`.

Format (nats-io/nkeys `xkeys.go`): `b"xkv1" + 24-byte nonce + NaCl box`
(curve25519-xsalsa20-poly1305). Seeds are `SX...`, public keys `X...`, in
the usual nkeys encoding (version byte, 32 bytes, CRC-16); the `nkeys`
package on PyPI has no curve keys, so the encoding is done here.
"""

from __future__ import annotations

import base64
import binascii
import os

from nacl.bindings import crypto_secretbox_MACBYTES as MAC_LEN
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nkeys import PREFIX_BYTE_SEED, crc16_checksum

from schemas.errors import Unauthorized

PREFIX_BYTE_CURVE = 23 << 3  # base32 'X'
XKV1 = b"xkv1"
NONCE_LEN = Box.NONCE_SIZE  # 24
XKEY_HEADER = "Nats-Server-Xkey"


class XkeyError(Unauthorized):
    """A curve key or a sealed message that does not decode."""

    code = "XKEY_INVALID"


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw + bytes(crc16_checksum(raw))).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    """The payload of an nkeys string, CRC checked."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as e:
        raise XkeyError("not an nkey") from e
    body, crc = raw[:-2], raw[-2:]
    if len(body) < 33 or bytes(crc16_checksum(body)) != crc:
        raise XkeyError("nkey checksum mismatch")
    return body


def new_seed() -> str:
    """A fresh `SX...` curve seed (e.g. for `gpubus up` and `gpubus nats-auth`)."""
    header = bytes([PREFIX_BYTE_SEED | PREFIX_BYTE_CURVE >> 5, (31 & PREFIX_BYTE_CURVE) << 3])
    return _b32(header + os.urandom(32))


def _private(seed: str) -> PrivateKey:
    body = _unb32(seed)
    prefix = (body[0] & 7) << 5 | (body[1] & 248) >> 3
    if body[0] & 248 != PREFIX_BYTE_SEED or prefix != PREFIX_BYTE_CURVE or len(body) != 34:
        raise XkeyError("not a curve seed (SX...)")
    return PrivateKey(body[2:])


def public_key(seed: str) -> str:
    """The `X...` key nats-server's `auth_callout { xkey }` is configured with."""
    return _b32(bytes([PREFIX_BYTE_CURVE]) + bytes(_private(seed).public_key))


def _public(key: str) -> PublicKey:
    body = _unb32(key)
    if body[0] != PREFIX_BYTE_CURVE or len(body) != 33:
        raise XkeyError("not a curve public key (X...)")
    return PublicKey(body[1:])


def seal(data: bytes, *, seed: str, recipient: str) -> bytes:
    """`data` encrypted from our seed to `recipient`, in the xkv1 format."""
    nonce = os.urandom(NONCE_LEN)
    return XKV1 + bytes(Box(_private(seed), _public(recipient)).encrypt(data, nonce))


def open_sealed(sealed: bytes, *, seed: str, sender: str) -> bytes:
    """The plaintext of an xkv1 message from `sender` to our seed; anything
    unsealed, tampered with or sealed to another key is an error."""
    if not sealed.startswith(XKV1) or len(sealed) < len(XKV1) + NONCE_LEN + MAC_LEN:
        raise XkeyError("not an xkv1 sealed message")
    nonce, box = sealed[len(XKV1) : len(XKV1) + NONCE_LEN], sealed[len(XKV1) + NONCE_LEN :]
    try:
        return Box(_private(seed), _public(sender)).decrypt(box, nonce)
    except CryptoError as e:
        raise XkeyError("sealed message does not open with our key") from e
