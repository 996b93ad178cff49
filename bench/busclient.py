"""The gpubus bus-only client of the benchmarks: what the gateway does for a
JSON job minus HTTP (record, `JobPublisher.publish`), then waiting for the
node's `succeeded` event, which comes after the result object is stored."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.client import Client as NatsClient

from bench.loops import Waiters
from bus import topology
from bus.jobstore import JobStore
from bus.publisher import JobPublisher
from bus.sealing import RecordSeal
from bus.settings import Settings
from schemas import codec, names
from schemas.events import EventType, JobEvent
from testkit.records import noop_record

TIMEOUT_S = 30.0


class BusClient:
    def __init__(self, nc: NatsClient, jobs: JobStore, publisher: JobPublisher) -> None:
        self.nc = nc
        self._jobs = jobs
        self._publisher = publisher
        self._waiters = Waiters()

    @classmethod
    async def open(cls, url: str, seal: RecordSeal) -> BusClient:
        """`seal`: the gateways' (a bus client writes records as they do)."""
        nc = await nats.connect(url)
        js = nc.jetstream()
        jobs = JobStore(await js.key_value(names.JOBS_BUCKET), seal, js=js)
        queues = topology.QueueMaker(js, Settings(nats_url=url))
        client = cls(nc, jobs, JobPublisher(js, seal, give_up_after_s=10, ensure_queue=queues))
        await nc.subscribe("events.>", cb=client._on_event)
        return client

    async def _on_event(self, msg) -> None:
        ev = codec.decode(msg.data, JobEvent)
        if ev.type is EventType.SUCCEEDED:
            self._waiters.resolve(ev.job_id)

    async def run_job(self, owner: str) -> float:
        """One noop job; returns seconds from publish to `succeeded`. The
        record is created first, off the clock: the gateway's step, which
        the materializer needs, not the bus path."""
        rec = noop_record(owner)
        await self._jobs.create(rec)
        fut = self._waiters.expect(rec.job_id)
        t0 = time.perf_counter()
        await self._publisher.publish(rec.to_message())
        await asyncio.wait_for(fut, TIMEOUT_S)
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.nc.close()
