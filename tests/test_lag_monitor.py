"""The lag monitor against a real nats-server: counts, the age of the oldest
unacked job, paging of the consumer list, and how it renders in /metrics."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js.api import ConsumerConfig
from prometheus_client import CollectorRegistry, generate_latest

from bus import lag_monitor, topology
from bus.connection import connect
from bus.lag_monitor import SHOWN_AFTER_BUSY_S, ConsumerLag, LagMonitor, QueueSnapshot, lane_consumer_names, poll
from bus.metrics import GatewayMetrics, QueueCollector
from bus.settings import Settings
from schemas import names
from schemas.names import Kind, Lane
from tests.promql import Exposition

pytestmark = pytest.mark.timeout(60)


async def _bus(server, **settings):
    nc = await connect([server.url], name="lag-test")
    js = nc.jetstream()
    s = Settings(nats_url=server.url, **settings)
    await topology.ensure_core(js, s)
    return nc, js, s


def _one(snap: QueueSnapshot, consumer: str):
    [c] = [c for c in snap.consumers if c.consumer == consumer]
    return c


async def _publish(js, owner: str, lane: Lane) -> float:
    """A job message, returned once the lane's consumer counts it: the server
    counts a consumer's pending messages after the PubAck, on a goroutine of
    its own, and a poll right after the publish saw 0 on a busy machine."""
    consumer = names.consumer_name(owner, lane)
    before = (await js.consumer_info(names.JOBS_STREAM, consumer)).num_pending
    await js.publish(names.job_subject(owner, lane, Kind.AUDIO), b"job")
    at = time.time()
    for _ in range(250):
        if (await js.consumer_info(names.JOBS_STREAM, consumer)).num_pending > before:
            break
        await asyncio.sleep(0.02)
    return at


async def test_lag_is_the_age_of_the_oldest_unacked_job(fresh_nats):
    nc, js, s = await _bus(fresh_nats)
    try:
        # Given alice's GPU lane with three jobs published 0.4 s apart
        await topology.ensure_owner(js, s, "alice")
        sent = []
        for _ in range(3):
            sent.append(await _publish(js, "alice", Lane.GPU))
            await asyncio.sleep(0.4)
        # When polled, all three are pending and the lag is the first one's age
        c = _one(await poll(js, nc), "gpu_alice")
        assert (c.owner, c.lane, c.pending, c.ack_pending, c.redelivered) == ("alice", Lane.GPU, 3, 0, 0)
        assert c.lag_s(time.time()) == pytest.approx(time.time() - sent[0], abs=0.3)
        # When a node takes two and acks only the second, the first is still the oldest
        psub = await js.pull_subscribe_bind(durable="gpu_alice", stream=names.JOBS_STREAM)
        first, second = await psub.fetch(2, timeout=5)
        await second.ack_sync()
        c = _one(await poll(js, nc), "gpu_alice")
        assert (c.pending, c.ack_pending) == (1, 1)
        assert c.lag_s(time.time()) == pytest.approx(time.time() - sent[0], abs=0.3)
        # When it acks the first too, the third is the oldest
        await first.ack_sync()
        c = _one(await poll(js, nc), "gpu_alice")
        assert (c.pending, c.ack_pending) == (1, 0)
        assert c.lag_s(time.time()) == pytest.approx(time.time() - sent[2], abs=0.3)
        # When everything is acked, nothing lags
        [third] = await psub.fetch(1, timeout=5)
        await third.ack_sync()
        c = _one(await poll(js, nc), "gpu_alice")
        assert (c.pending, c.ack_pending, c.oldest_at, c.lag_s(time.time())) == (0, 0, None, 0.0)
        # and the other lane consumers are listed with nothing pending
        assert {x.consumer for x in (await poll(js, nc)).consumers} == {"gpu_alice", "cpu_alice", "cpu_shared"}
    finally:
        await nc.close()


async def test_an_expired_last_delivery_does_not_count_as_lag(fresh_nats):
    # Given a GPU lane that gives a node 1 s and one delivery per job
    nc, js, s = await _bus(fresh_nats, gpu_ack_wait=1.0, gpu_max_deliver=1)
    try:
        await topology.ensure_owner(js, s, "bob")
        await _publish(js, "bob", Lane.GPU)
        psub = await js.pull_subscribe_bind(durable="gpu_bob", stream=names.JOBS_STREAM)
        await psub.fetch(1, timeout=5)  # taken and never acked: the node died
        await asyncio.sleep(1.5)  # past ack_wait: the job now waits for the fallback router
        # When a later job arrives, the lag is that job's age, not the abandoned one's
        later = await _publish(js, "bob", Lane.GPU)
        await asyncio.sleep(0.3)
        c = _one(await poll(js, nc), "gpu_bob")
        assert (c.pending, c.ack_pending) == (1, 0)
        assert c.lag_s(time.time()) == pytest.approx(time.time() - later, abs=0.3)
    finally:
        await nc.close()


async def test_consumer_list_is_read_past_one_page(fresh_nats):
    nc, js, s = await _bus(fresh_nats)
    try:
        # Given more lane consumers than one CONSUMER.NAMES page holds (1,024)
        owners = [f"p{i:04d}" for i in range(1030)]
        gate = asyncio.Semaphore(32)

        async def lane(owner):
            async with gate:
                await topology.ensure_lane(js, s, owner, Lane.GPU)

        await asyncio.gather(*(lane(o) for o in owners))
        # and consumers of an operator's on the stream, listed first (names come sorted)
        for i in range(30):
            await js.add_consumer(
                names.JOBS_STREAM, ConsumerConfig(durable_name=f"aux-{i:02d}", filter_subject=f"jobs.aux{i:02d}.>")
            )
        await _publish(js, owners[-1], Lane.GPU)
        # Then one poll sees every lane consumer once, including the last page's
        queues = [q.consumer for q in await lane_consumer_names(nc)]
        assert len(queues) == len(set(queues)) == len(owners) + 1  # + cpu_shared
        snap = await poll(js, nc)
        assert len(snap.consumers) == len(owners) + 1
        assert _one(snap, f"gpu_{owners[-1]}").pending == 1
    finally:
        await nc.close()


async def _consumer_infos_asked(nc, step) -> list[str]:
    """The consumers whose info `step` asks JetStream for (a second
    connection listening on the API subject, as the server sees it)."""
    spy = await connect([nc.connected_url.geturl()], name="lag-spy")
    asked: list[str] = []

    async def heard(msg):
        asked.append(msg.subject)

    sub = await spy.subscribe(f"$JS.API.CONSUMER.INFO.{names.JOBS_STREAM}.*", cb=heard)
    await spy.flush()
    try:
        await step
        await spy.flush()
    finally:
        await sub.unsubscribe()
        await spy.close()
    return sorted(a.rsplit(".", 1)[1] for a in asked)


async def test_a_poll_asks_only_about_the_queues_that_hold_jobs(fresh_nats, monkeypatch):
    nc, js, s = await _bus(fresh_nats)
    try:
        # Given 40 owners, two of whom have a job waiting
        for i in range(40):
            await topology.ensure_owner(js, s, f"q{i:02d}")
        await _publish(js, "q07", Lane.GPU)
        await _publish(js, "q31", Lane.CPU)
        # When the monitor polls
        asked = await _consumer_infos_asked(nc, poll(js, nc))
        # Then it asked for those two consumers' info only, and still lists all 81 (the idle at 0)
        assert asked == ["cpu_q31", "gpu_q07"]
        snap = await poll(js, nc)
        assert len(snap.consumers) == 81
        assert [(c.consumer, c.pending) for c in snap.consumers if c.pending] == [("cpu_q31", 1), ("gpu_q07", 1)]
        assert _one(snap, "gpu_q08").pending == 0 and _one(snap, "gpu_q08").busy_at is None
        # And where the server would page the subjects, every consumer's info is read instead
        monkeypatch.setattr(lag_monitor, "SUBJECT_DETAILS_LIMIT", 1)
        paged = await poll(js, nc)
        assert [(c.consumer, c.pending) for c in paged.consumers if c.pending] == [("cpu_q31", 1), ("gpu_q07", 1)]
    finally:
        await nc.close()


def _lag(consumer: str, owner: str, pending: int, busy_at: float | None) -> ConsumerLag:
    return ConsumerLag(consumer, owner, Lane.CPU, pending, 0, 0, None, job_owner=owner, busy_at=busy_at)


def test_metrics_show_the_queues_that_hold_jobs_or_did_lately():
    # Given queues that hold jobs, drained a minute ago, drained long ago, and never held any
    t = 1_000_000.0
    snap = QueueSnapshot(
        at=t,
        consumers=(
            _lag("cpu_busy", "busy", 2, t),
            _lag("cpu_drained", "drained", 0, t - 60),
            _lag("cpu_long", "long", 0, t - SHOWN_AFTER_BUSY_S - 1),
            _lag("cpu_never", "never", 0, None),
        ),
    )
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: snap, list, clock=lambda: t))
    exported = generate_latest(registry).decode()
    # Then the first two have series (the drained one at 0), the rest none
    for owner, pending in (("busy", 2), ("drained", 0)):
        labels = {"consumer": f"cpu_{owner}", "owner": owner, "lane": "cpu", "priority": "normal"}
        assert registry.get_sample_value("gpubus_consumer_pending_jobs", labels) == pending
        assert registry.get_sample_value("gpubus_waiting_jobs", {"owner": owner, "priority": "normal"}) == pending
    assert "long" not in exported and "never" not in exported
    # And every queue is counted, busy or idle (what the server pays for per acked job)
    assert registry.get_sample_value("gpubus_lane_consumers", {"state": "busy"}) == 1
    assert registry.get_sample_value("gpubus_lane_consumers", {"state": "idle"}) == 3


async def test_queue_gauges_render_from_the_snapshot_and_age_between_polls(fresh_nats):
    nc, js, s = await _bus(fresh_nats)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    monitor = LagMonitor(js, nc, interval_s=60, metrics=metrics)
    try:
        await topology.ensure_owner(js, s, "carol")
        await _publish(js, "carol", Lane.CPU)
        # Given a monitor whose only poll is the one at start
        await monitor.start()
        metrics.watch_queues(monitor.snapshot, list)
        labels = {"consumer": "cpu_carol", "owner": "carol", "lane": "cpu", "priority": "normal"}
        first = registry.get_sample_value("gpubus_consumer_lag_seconds", labels)
        await asyncio.sleep(1.0)
        # Then the pending count is the poll's and the lag has aged with the clock
        assert registry.get_sample_value("gpubus_consumer_pending_jobs", labels) == 1
        assert registry.get_sample_value("gpubus_consumer_lag_seconds", labels) >= first + 0.9
        per_owner = {"owner": "carol", "priority": "normal"}
        assert registry.get_sample_value("gpubus_waiting_jobs", per_owner) == 1
        assert registry.get_sample_value("gpubus_oldest_wait_seconds", per_owner) >= first + 0.9
        assert registry.get_sample_value("gpubus_live_nodes", {"owner": "carol", "lane": "cpu"}) == 0
        assert registry.get_sample_value("gpubus_lag_polls_total", {"result": "ok"}) == 1
        assert registry.get_sample_value("gpubus_queue_info_age_seconds") >= 0.9
        exported = Exposition().add(generate_latest(registry).decode())
        assert exported.samples["gpubus_consumer_ack_pending_jobs"] == {"consumer", "owner", "lane", "priority"}
    finally:
        await monitor.stop()
        await nc.close()


async def test_a_failed_poll_keeps_the_last_snapshot_and_counts_the_error(fresh_nats):
    nc, _, _ = await _bus(fresh_nats)
    js = nc.jetstream(timeout=1.0)
    metrics = GatewayMetrics(CollectorRegistry())
    monitor = LagMonitor(js, nc, interval_s=60, metrics=metrics)
    try:
        good = await monitor.refresh()
        # When JetStream goes away
        fresh_nats.stop()
        after = await monitor.refresh()
        # Then the numbers stay (their age shows they are old) and the failure is counted
        assert after is good and good.at is not None
        assert metrics.registry.get_sample_value("gpubus_lag_polls_total", {"result": "error"}) == 1
    finally:
        await nc.close()
