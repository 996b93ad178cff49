"""An owner's job listing holds every record, every time, on a bucket
being written: the KV watch behind it took the server's "nothing pending"
for the end of the values, and that answer can overtake the last values
the server had delivered (bus/ephemeral.KeyWatch): 3 listings in 1,500
came back short."""

from __future__ import annotations

import asyncio

import nats

from bus.jobstore import JobStore
from bus.sealing import RecordSeal
from ops.embedded_nats import NatsServer
from schemas import names
from tests.test_bus import _record

LISTINGS = 1500


async def test_every_record_is_listed_every_time_while_others_are_written(tmp_path):
    with NatsServer(store_dir=tmp_path / "nats") as server:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            store = JobStore(await js.create_key_value(bucket=names.JOBS_BUCKET), RecordSeal(None), js=js)
            # Given an owner with three jobs, and another owner's jobs being created all along
            records = [_record("alice") for _ in range(3)]
            for rec in records:
                await store.create(rec)
            mine = {rec.job_id for rec in records}
            writing = True

            async def others() -> None:
                while writing:
                    await store.create(_record("bob"))

            writer = asyncio.create_task(others())
            # When the owner's jobs are listed again and again
            try:
                short = [i for i in range(LISTINGS) if {r.job_id for r in await store.list("alice")} != mine]
            finally:
                writing = False
                await writer
            # Then every listing held all three
            assert short == [], f"{len(short)} of {LISTINGS} listings were not whole, first at {short[:5]}"
        finally:
            await nc.close()
