"""Streaming reads and writes of the JetStream object store.

nats-py's `ObjectStore.put` wants a whole reader up front and its `get` grows a
bytes object chunk by chunk (5-27 MB/s measured). gpubus streams an HTTP
upload straight into chunks as they arrive (never the whole file in memory)
and reads chunks by direct get into a file, checking SHA-256 itself.
The object format is the standard one, so `nats object get` still works.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions
from nats.js.errors import NotFoundError
from nats.nuid import NUID

from schemas import names
from schemas.errors import GpubusError, NotFound, PayloadTooLarge

log = logging.getLogger("gpubus.bus.objects")

CHUNK_BYTES = 1024 * 1024  # 1 MiB chunks publish 2-3x faster than the 128 KiB default
MAX_INFLIGHT_CHUNKS = 16
PUBACK_TIMEOUT_S = 10.0  # an ack lost in a NATS restart never comes: give up, the caller retries


class DigestMismatch(GpubusError):
    """The bytes read back do not match the digest recorded at upload."""

    code = "INPUT_CORRUPT"


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def _chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


class ObjectWriter:
    """Write an object chunk by chunk; `commit()` makes it visible, `abort()`
    leaves nothing behind. Chunks are published asynchronously with a bounded
    window, so memory stays at ~MAX_INFLIGHT_CHUNKS MiB whatever the size."""

    def __init__(self, js: JetStreamContext, bucket: str, name: str, *, max_bytes: int | None = None) -> None:
        self._js = js
        self.bucket = bucket
        self.name = name
        self._nuid = NUID().next().decode()
        self._subject = _chunk_subject(bucket, self._nuid)
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._inflight: list[asyncio.Future[Any]] = []
        self.size = 0
        self.chunks = 0
        self._done = False

    @property
    def sha256_hex(self) -> str:
        return self._sha.hexdigest()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise PayloadTooLarge(f"upload exceeds {self._max_bytes // (1024 * 1024)} MiB")
        self._sha.update(data)
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            chunk = bytes(self._buf[:CHUNK_BYTES])
            del self._buf[:CHUNK_BYTES]
            await self._publish(chunk)

    async def _publish(self, chunk: bytes) -> None:
        fut = await self._js.publish_async(self._subject, chunk)
        self._inflight.append(fut)
        self.chunks += 1
        if len(self._inflight) >= MAX_INFLIGHT_CHUNKS:
            await asyncio.wait_for(self._inflight.pop(0), PUBACK_TIMEOUT_S)

    async def commit(self, *, description: str | None = None) -> None:
        """Publish the last chunk and the meta message together and wait for
        all PubAcks at once (one round trip where there were two). The meta
        is sent after every chunk on the same connection, so the server
        stores it last; if any chunk failed, the meta is purged again."""
        if self._buf:
            await self._publish(bytes(self._buf))
            self._buf.clear()
        digest = base64.urlsafe_b64encode(self._sha.digest()).decode()
        info = ObjectInfo(
            name=self.name,
            bucket=self.bucket,
            nuid=self._nuid,
            size=self.size,
            chunks=self.chunks,
            digest=f"SHA-256={digest}",
            mtime=datetime.now(UTC).isoformat(),
            description=description,
            options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
        )
        meta = await self._js.publish_async(
            _meta_subject(self.bucket, self.name), json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"}
        )
        try:
            acks = await asyncio.wait_for(
                asyncio.gather(*self._inflight, meta, return_exceptions=True), PUBACK_TIMEOUT_S
            )
        except TimeoutError:
            await self._purge_meta()
            raise
        self._inflight.clear()
        failed = [a for a in acks if isinstance(a, BaseException)]
        if failed:
            if not isinstance(acks[-1], BaseException):
                await self._purge_meta()
            raise failed[0]
        self._done = True

    async def _purge_meta(self) -> None:
        """Best effort: a meta stored without all its chunks would name an
        object that can never be read whole (readers would still catch it by
        the chunk count and SHA-256)."""
        try:
            await self._js.purge_stream(names.object_stream(self.bucket), subject=_meta_subject(self.bucket, self.name))
        except Exception as e:
            log.warning("could not purge the meta of unfinished %s/%s: %s", self.bucket, self.name, e)

    async def abort(self) -> None:
        """Remove whatever chunks were written; safe to call twice."""
        if self._done:
            return
        self._done = True
        # Chunks already sent must be stored before the purge: the server
        # answers the purge request apart from the stream's incoming
        # messages, so a purge sent right behind them could run first and
        # leave them behind.
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._inflight, return_exceptions=True), PUBACK_TIMEOUT_S)
            self._inflight.clear()
        try:
            await self._js.purge_stream(names.object_stream(self.bucket), subject=self._subject)
        except Exception as e:  # the purge is best effort; the bucket TTL is the backstop
            log.warning("could not purge aborted object %s/%s: %s", self.bucket, self.name, e)


async def put_bytes(js: JetStreamContext, bucket: str, name: str, data: bytes) -> None:
    w = ObjectWriter(js, bucket, name)
    try:
        for i in range(0, len(data), CHUNK_BYTES):
            await w.write(data[i : i + CHUNK_BYTES])
        await w.commit()
    except BaseException:
        await w.abort()
        raise


async def object_info(js: JetStreamContext, bucket: str, name: str) -> ObjectInfo:
    try:
        msg = await js.get_last_msg(names.object_stream(bucket), _meta_subject(bucket, name))
    except NotFoundError:
        raise NotFound(f"no object {name!r}") from None
    info: ObjectInfo = ObjectInfo.from_response(json.loads(msg.data or b"{}"))
    if info.deleted:
        raise NotFound(f"no object {name!r}")
    return info


async def _iter_chunks(js: JetStreamContext, info: ObjectInfo) -> AsyncIterator[bytes]:
    """The object's chunks in order, one direct get each (`next_by_subj` from
    the sequence after the last chunk). Direct gets are plain requests, so
    they work for a user node reaching JetStream through its account's
    imports, where a push consumer's deliveries could not follow it
    (bus/node_permissions.py); memory stays at one chunk."""
    stream = names.object_stream(info.bucket)
    subject = _chunk_subject(info.bucket, info.nuid)
    seq = 1
    for _ in range(info.chunks or 0):
        msg = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
        seq = (msg.seq or seq) + 1
        yield msg.data or b""


def _check_digest(info: ObjectInfo, sha: hashlib._Hash, expected_sha256_hex: str | None) -> None:
    recorded = base64.urlsafe_b64decode(info.digest.split("=", 1)[1]) if info.digest else None
    if recorded is not None and sha.digest() != recorded:
        raise DigestMismatch(f"object {info.name!r} does not match its recorded digest")
    if expected_sha256_hex is not None and sha.hexdigest() != expected_sha256_hex:
        raise DigestMismatch(f"object {info.name!r} does not match the SHA-256 recorded at submit")


async def read_to_file(
    js: JetStreamContext, bucket: str, name: str, dest: Path, *, expected_sha256_hex: str | None = None
) -> int:
    """Stream an object to `dest`, verifying SHA-256; returns its size."""
    info = await object_info(js, bucket, name)
    sha = hashlib.sha256()
    with dest.open("wb") as f:
        async for data in _iter_chunks(js, info):
            sha.update(data)
            await asyncio.to_thread(f.write, data)
    _check_digest(info, sha, expected_sha256_hex)
    return info.size or 0


async def read_bytes(js: JetStreamContext, bucket: str, name: str, *, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """Small objects (results) into memory."""
    info = await object_info(js, bucket, name)
    if (info.size or 0) > max_bytes:
        raise PayloadTooLarge(f"object {name!r} is {info.size} bytes, over {max_bytes}")
    sha = hashlib.sha256()
    parts: list[bytes] = []
    async for data in _iter_chunks(js, info):
        sha.update(data)
        parts.append(data)
    _check_digest(info, sha, None)
    return b"".join(parts)


async def delete_object(js: JetStreamContext, bucket: str, name: str) -> None:
    try:
        info = await object_info(js, bucket, name)
    except NotFound:
        return
    await js.purge_stream(names.object_stream(bucket), subject=_chunk_subject(bucket, info.nuid))
    await js.purge_stream(names.object_stream(bucket), subject=_meta_subject(bucket, name))
