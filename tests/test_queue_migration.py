"""Upgrading a bus made before priorities and pool shares: the JOBS stream
and lane consumers of the older layout (`gpu_<owner>`/`cpu_<owner>` on
`jobs.<owner>.<lane>.>`, one `cpu_shared` on `jobs.shared.cpu.>`), holding
queued jobs and one a node took and never acked. The new gateway makes its
topology at start as always; nothing may be stranded."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from bus import sealing
from bus.jobstore import JobStore
from bus.sealing import RecordSeal
from ops.embedded_nats import NatsServer
from schemas import codec, names
from schemas.jobs import JobMessage
from schemas.names import Lane
from testkit.records import noop_record
from tests.harness import ADMIN_TOKEN, Gateway, start_node, stop_all, wait_job

pytestmark = pytest.mark.timeout(180)

OWNER, POOL_OWNER = "mig-own", "mig-pool"
OLD_FILTERS = {  # the consumers as the older version made them
    f"cpu_{OWNER}": f"jobs.{OWNER}.cpu.>",
    f"gpu_{OWNER}": f"jobs.{OWNER}.gpu.>",
    "cpu_shared": "jobs.shared.cpu.>",
}


async def old_bus(url: str) -> tuple[list[str], list[str], str]:
    """The older layout with jobs on it: (own-lane job ids, pool job ids,
    the pool job a node took and left unacked)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=names.JOBS_STREAM,
                subjects=[names.JOBS_SUBJECTS],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=120.0,
            )
        )
        for durable, subject in OLD_FILTERS.items():
            await js.add_consumer(
                names.JOBS_STREAM,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=2.0,
                ),
            )
        seal = RecordSeal.from_secret(ADMIN_TOKEN)
        jobs = JobStore(await js.create_key_value(bucket=names.JOBS_BUCKET, history=1), seal, js=js)

        async def queue(owner: str, queue_owner: str, subject: str) -> str:
            rec = noop_record(owner, queue_owner=queue_owner, routed_reason="old")
            await jobs.create(rec)
            data = codec.encode(rec.to_message())
            ack = await js.publish(subject, data, headers={sealing.HEADER: seal.tag(subject, data)})
            await jobs.update(owner, rec.job_id, lambda r: r.model_copy(update={"stream_seq": ack.seq}))
            return rec.job_id

        own = [await queue(OWNER, OWNER, f"jobs.{OWNER}.cpu.noop") for _ in range(3)]
        pool = [await queue(POOL_OWNER, names.SHARED, f"jobs.shared.cpu.noop.{POOL_OWNER}") for _ in range(3)]
        sub = await js.pull_subscribe_bind("cpu_shared", names.JOBS_STREAM)
        [taken] = await sub.fetch(1)  # an old shared node took this one and died
        return own, pool, codec.decode(taken.data, JobMessage).job_id
    finally:
        await nc.close()


async def consumer_filters(url: str) -> dict[str, str]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        infos = await js.consumers_info(names.JOBS_STREAM)
        return {i.name: i.config.filter_subject for i in infos}
    finally:
        await nc.close()


def test_jobs_queued_before_the_upgrade_all_finish(tmp_path):
    """Given the older layout with queued jobs on an owner's lane and on
    `cpu_shared`, and one taken but never acked, when the new gateway
    starts (topology made idempotently, as always), then the old consumers
    keep their names with narrower filters, every old job finishes once
    (the unacked one after its ack_wait), and new high jobs of the owner
    get their own consumer beside the narrowed one."""
    assert OLD_FILTERS["cpu_shared"] != names.LaneQueue(names.SHARED, Lane.CPU).filter
    server = NatsServer(store_dir=tmp_path / "nats").start()
    procs = []
    try:
        own, pool, unacked = asyncio.run(old_bus(server.url))
        gw = Gateway(server.url, tmp_path, settings={"enable_noop": "true", "cpu_ack_wait": 2}).start()
        procs.append(gw.proc)
        node = {"enable_noop": "true", "cpu_ack_wait": 2}
        procs.append(start_node(gw, "cpu", shared=True, name="pool", **node))
        key = gw.create_key(OWNER)  # the owner's lanes are made (narrowed) here
        pool_key = gw.create_key(POOL_OWNER)
        procs.append(start_node(gw, "cpu", key=key, name="own", **node))
        with gw.client(key) as c, gw.client(pool_key) as pc:
            for job_id in own:
                assert wait_job(c, job_id, timeout_s=30)["status"] == "succeeded"
            for job_id in pool:
                done = wait_job(pc, job_id, timeout_s=30)
                assert done["status"] == "succeeded", done
                assert done["attempts"] == 1
            r = c.post("/api/v1/jobs", json={"kind": "noop", "priority": "high"})
            assert r.status_code == 202, r.text
            assert wait_job(c, r.json()["job_id"], timeout_s=30)["status"] == "succeeded"
        filters = asyncio.run(consumer_filters(server.url))
        assert filters["cpu_shared"] == "jobs.shared.cpu.*.*"
        assert filters[f"cpu_{OWNER}"] == f"jobs.{OWNER}.cpu.*"
        assert filters[f"gpu_{OWNER}"] == f"jobs.{OWNER}.gpu.*"
        assert filters[f"cpu-high_{OWNER}"] == f"jobs.{OWNER}.cpu.*.high"
        assert unacked in pool
    finally:
        stop_all(procs, timeout_s=5)
        server.stop()
