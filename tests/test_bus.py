"""Bus pieces against a real nats-server: topology, object store streaming."""

from __future__ import annotations

import asyncio
import hashlib
import os

import nats
import pytest

from bus import objects, topology
from bus.settings import Settings
from schemas import names
from schemas.errors import NotFound, PayloadTooLarge

pytestmark = pytest.mark.timeout(60)


async def test_two_gateways_create_topology_at_once(fresh_nats):
    s = Settings(nats_url=fresh_nats.url)
    ncs = [await nats.connect(fresh_nats.url) for _ in range(2)]
    try:
        await asyncio.gather(*(topology.ensure_core(nc.jetstream(), s) for nc in ncs))
        await asyncio.gather(*(topology.ensure_owner(nc.jetstream(), s, "alice") for nc in ncs))
        # ...and again later, with a changed ack_wait: applied as an update
        s2 = Settings(nats_url=fresh_nats.url, gpu_ack_wait=7)
        await topology.ensure_core(ncs[0].jetstream(), s2)
        await topology.ensure_owner(ncs[0].jetstream(), s2, "alice")
        info = await ncs[1].jetstream().consumer_info(names.JOBS_STREAM, "gpu_alice")
        assert info.config.ack_wait == 7 and info.config.max_deliver == 1
        si = await ncs[1].jetstream().stream_info(names.JOBS_STREAM)
        assert si.config.retention == "workqueue" and si.config.duplicate_window >= 120
    finally:
        for nc in ncs:
            await nc.close()


async def test_object_streaming_roundtrip_and_abort(fresh_nats, tmp_path):
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    try:
        await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
        await topology.ensure_owner(js, Settings(nats_url=fresh_nats.url), "bob")
        bucket = names.files_bucket("bob")
        data = os.urandom(3 * objects.CHUNK_BYTES + 12345)
        w = objects.ObjectWriter(js, bucket, "in/j1/a.bin")
        for i in range(0, len(data), 65536):  # arrives in HTTP-sized pieces
            await w.write(data[i : i + 65536])
        await w.commit()
        dest = tmp_path / "a.bin"
        size = await objects.read_to_file(js, bucket, "in/j1/a.bin", dest, expected_sha256_hex=hashlib.sha256(data).hexdigest())
        assert size == len(data) and dest.read_bytes() == data
        # the standard object store client reads it too (operators use `nats object get`)
        assert (await (await js.object_store(bucket)).get("in/j1/a.bin")).data == data
        with pytest.raises(objects.DigestMismatch):
            await objects.read_to_file(js, bucket, "in/j1/a.bin", dest, expected_sha256_hex="0" * 64)
        # an aborted or oversize write leaves nothing behind
        w2 = objects.ObjectWriter(js, bucket, "in/j2/b.bin", max_bytes=objects.CHUNK_BYTES)
        with pytest.raises(PayloadTooLarge):
            for _ in range(3):
                await w2.write(os.urandom(objects.CHUNK_BYTES // 2 + 1))
        await w2.abort()
        with pytest.raises(NotFound):
            await objects.object_info(js, bucket, "in/j2/b.bin")
        info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=">")
        assert len(info.state.subjects) == 2  # one object: its chunks and its meta
    finally:
        await nc.close()
