"""The one codec of the wire: pydantic models as msgpack maps.

msgpack over JSON because payloads carry floats and bytes and are decoded on
every hop; pydantic validation on decode so a bad message is refused at the
edge with the raw bytes kept for the log, never half-processed.
"""

from __future__ import annotations

from typing import TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from schemas.errors import GpubusError

M = TypeVar("M", bound=BaseModel)


class DecodeError(GpubusError):
    """The bytes are not a valid message of the expected type."""

    code = "DECODE_ERROR"

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


def encode(model: BaseModel) -> bytes:
    packed: bytes = msgpack.packb(model.model_dump(mode="json", by_alias=True, exclude_none=True), use_bin_type=True)
    return packed


def decode(data: bytes, model: type[M]) -> M:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise DecodeError(f"not msgpack: {e}", data) from e
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a map, got {type(obj).__name__}", data)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise DecodeError(f"invalid {model.__name__}: {e.error_count()} error(s): {e.errors()[0]['msg']}", data) from e


def encode_record(model: BaseModel) -> bytes:
    """Records at rest (KV) are JSON, not msgpack: operators read them with
    `nats kv get`, and they are written far less often than messages."""
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode_record(data: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        raise DecodeError(f"invalid {model.__name__} record: {e.errors()[0]['msg']}", data) from e
