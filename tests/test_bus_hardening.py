"""What a hostile node of one user can do to the shared gateway side, on a
real server through a real node identity (auth callout), and what the
gateway does about it: the security review's F2, F4, F6, F7 and F14."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import nats
import pytest

from bus import node_permissions
from bus.event_drops import UNKNOWN_JOB_QUOTA
from bus.topology import EVENT_MAX_BYTES, INTERNAL_MAX_DELIVER
from schemas import codec, names
from schemas.events import EventType, JobEvent
from schemas.jobs import ErrorInfo, new_job_id
from schemas.names import Lane
from tests.harness import TESTDATA, connect_as_node, metric, submit_file, wait_job, wait_until

pytestmark = pytest.mark.timeout(180)


def _heartbeat(owner: str, lane: str, node_id: str, **kw) -> bytes:
    base = dict(
        node_id=node_id,
        owner=owner,
        lane=lane,
        device="cpu",
        kinds=["audio", "video", "url"],
        models=["tiny.en", "large-v3"],
        capacity=8,
        busy=0,
        last_seen=time.time(),
        started_at=time.time(),
        metrics_url="http://127.0.0.1:9/metrics",
    )
    return json.dumps(base | kw).encode()


def _event(owner: str, job_id: str, type_: EventType, **kw) -> bytes:
    """Encoded without validation: a hostile node is not bound by our models."""
    fields = dict(type=type_, job_id=job_id, owner=owner, attempt=1, lane=Lane.CPU, node_id="cpu-test", at=time.time())
    return codec.encode(JobEvent.model_construct(**(fields | kw)))


def _error(message: str) -> ErrorInfo:
    return ErrorInfo.model_construct(code="X", message=message)


def _workers(gateway, key: str) -> list[dict]:
    with gateway.client(key) as c:
        return c.get("/api/v1/status/workers").json()["nodes"]


def _record(gateway, key: str, job_id: str) -> dict:
    with gateway.client(key) as c:
        r = c.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()


def _timed_job(gateway, key: str) -> float:
    t0 = time.monotonic()
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")
        assert wait_job(c, job["job_id"], timeout_s=120)["status"] == "succeeded"
    return time.monotonic() - t0


# F2: the node registry


async def test_registry_entry_naming_another_owner_is_ignored(nats_server, gateway, shared_cpu_node, user):
    alice, bob = user + "-a", user + "-b"
    key_a = gateway.create_key(alice, roles=("node",))
    key_b = gateway.create_key(bob, roles=("user",))
    bad_before = metric(gateway.url, "gpubus_bad_heartbeats_total")
    nc = await connect_as_node(nats_server, key_a, alice)
    try:
        js = nc.jetstream()
        # Given alice's node writes, under its own keys, bodies that say "bob" and a far future
        for lane in ("cpu", "gpu"):
            await js.publish(
                f"$KV.nodes.{alice}.{lane}.spoof", _heartbeat(bob, lane, f"{lane}-spoof", last_seen=time.time() + 3e8)
            )
        await js.publish(f"$KV.nodes.{alice}.cpu.ctl", _heartbeat(alice, "cpu", "ctl"))  # control: a true entry
        wait_until(
            lambda: any(n["node_id"] == "ctl" for n in _workers(gateway, key_a)),
            timeout_s=10,
            what="the control entry seen",
        )
        # Then bob sees no node of his, alice none either, and it was counted
        assert not [n for n in _workers(gateway, key_b) if n["owner"] == bob]
        assert not [n for n in _workers(gateway, key_a) if "spoof" in n["node_id"]]
        assert metric(gateway.url, "gpubus_bad_heartbeats_total") >= bad_before + 2
        # ...and bob's job goes to the shared pool and finishes
        with gateway.client(key_b) as c:
            job = submit_file(c, TESTDATA / "hello.wav")
            assert job["lane"] == "cpu"
            final = wait_job(c, job["job_id"], timeout_s=60)
        assert final["status"] == "succeeded" and final["queue_owner"] == names.SHARED
    finally:
        await nc.close()


async def test_registry_entry_ages_by_server_time_and_metrics_url_is_checked(nats_server, gateway, user):
    key = gateway.create_key(user, roles=("user", "node"))
    nc = await connect_as_node(nats_server, key, user)
    try:
        # Given one heartbeat claiming to be seen ten years ahead, with a metrics_url carrying userinfo
        hb = _heartbeat(
            user, "cpu", "stale", last_seen=time.time() + 3e8, metrics_url="http://admin:pw@127.0.0.1:9/metrics"
        )
        await nc.jetstream().publish(f"$KV.nodes.{user}.cpu.stale", hb)
    finally:
        await nc.close()
    [node] = wait_until(
        lambda: [n for n in _workers(gateway, key) if n["node_id"] == "stale"], timeout_s=10, what="the entry listed"
    )
    # Then it is listed as seen now at the latest, without its URL, and nowhere for Prometheus
    assert node["last_seen"] <= time.time() + 1 and node["metrics_url"] is None
    with gateway.admin() as admin:
        targets = admin.get("/api/v1/status/prometheus-targets").json()
    assert not [t for t in targets if t["labels"]["owner"] == user]
    # ...and, its heartbeats stopped, it is gone after the TTL (3 s here), DEL marker or not
    t0 = time.monotonic()
    wait_until(
        lambda: not [n for n in _workers(gateway, key) if n["node_id"] == "stale"],
        timeout_s=12,
        what="the stale entry gone",
    )
    assert time.monotonic() - t0 < 8


# F4: bounded events and records


async def _park_a_job(nats_server, gateway, key: str, owner: str, nc) -> str:
    """A job queued on the owner's own CPU lane, where nobody pulls: a
    heartbeat of a (fake) CPU node of the owner makes the gateway route it
    there, so the shared pool never runs it and events can be forged for it."""
    await nc.jetstream().publish(f"$KV.nodes.{owner}.cpu.parking", _heartbeat(owner, "cpu", "parking"))
    wait_until(
        lambda: any(n["node_id"] == "parking" for n in _workers(gateway, key)),
        timeout_s=10,
        what="the parking node live",
    )
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")
    assert _record(gateway, key, job["job_id"])["queue_owner"] == owner, "routed to the pool: the lane is not parked"
    return job["job_id"]


async def test_oversize_events_and_foreign_result_objects_are_refused(nats_server, gateway, user):
    key = gateway.create_key(user, roles=("user", "node"))
    nc = await connect_as_node(nats_server, key, user)
    try:
        js = nc.jetstream()
        job_id = await _park_a_job(nats_server, gateway, key, user, nc)
        subject = names.event_subject(user, job_id)
        bad_before = metric(gateway.url, "gpubus_bad_events_total")
        # When the owner's node reports a 100 KiB failure: the stream refuses it outright
        with pytest.raises(nats.js.errors.APIError):
            await js.publish(subject, _event(user, job_id, EventType.FAILED, error=_error("m" * (EVENT_MAX_BYTES + 1))))
        # ...and under the stream's cap: a long message, a long node id, a result that is the owner's cookie file
        await js.publish(subject, _event(user, job_id, EventType.FAILED, error=_error("m" * 20_000)))
        await js.publish(subject, _event(user, job_id, EventType.STARTED, node_id="n" * 5_000))
        await js.publish(subject, _event(user, job_id, EventType.SUCCEEDED, result_object=names.COOKIES_OBJECT))
        # ...then the true outcome, for the control
        await js.publish(
            subject, _event(user, job_id, EventType.SUCCEEDED, result_object=names.result_object(job_id, 1))
        )
    finally:
        await nc.close()
    wait_until(lambda: _record(gateway, key, job_id)["status"] == "succeeded", timeout_s=15, what="the true outcome")
    rec = _record(gateway, key, job_id)
    # Then only the true one counted: the record is small and points at the attempt's own result
    assert rec["result_object"] == names.result_object(job_id, 1) and rec["node_id"] == "cpu-test"
    assert rec.get("late_completions", 0) == 0 and "error" not in rec
    assert len(json.dumps(rec)) < 4096
    assert metric(gateway.url, "gpubus_bad_events_total") >= bad_before + 3


# F7: poison events


async def test_event_that_cannot_be_folded_is_termed_and_others_go_on(nats_server, gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    svc = await nats.connect(nats_server.url)
    try:
        js = svc.jetstream()
        for durable, stream in (
            (names.MATERIALIZER_CONSUMER, names.EVENTS_STREAM),
            (names.FALLBACK_CONSUMER, names.DEADLETTER_STREAM),
        ):
            assert (await js.consumer_info(stream, durable)).config.max_deliver == INTERNAL_MAX_DELIVER
        # Given a job record that no fold can read, and an event for it
        job_id = new_job_id()
        await (await js.key_value(names.JOBS_BUCKET)).put(names.job_key(user, job_id), b"{not a record")
        dropped_before = metric(gateway.url, "gpubus_dropped_events_total", reason="not_foldable")
        ack = await js.publish(names.event_subject(user, job_id), _event(user, job_id, EventType.STARTED))
        # Then the materializer drops it at once instead of redelivering it every second
        wait_until(
            lambda: metric(gateway.url, "gpubus_dropped_events_total", reason="not_foldable") > dropped_before,
            timeout_s=15,
            what="the poison event dropped",
        )
        await asyncio.sleep(2.5)
        info = await js.consumer_info(names.EVENTS_STREAM, names.MATERIALIZER_CONSUMER)
        assert info.ack_floor.stream_seq >= ack.seq  # settled: not waiting for another delivery
        assert metric(gateway.url, "gpubus_dropped_events_total", reason="not_foldable") == dropped_before + 1
    finally:
        await svc.close()
    # ...and goes on folding other jobs
    assert _timed_job(gateway, key) < 60


# F6: floods of events for unknown jobs


def _unknown_job_drops(gateway) -> float:
    return sum(metric(gateway.url, "gpubus_dropped_events_total", reason=r) for r in ("unknown_job", "over_quota"))


async def test_flood_of_unknown_job_events_does_not_starve_another_user(nats_server, gateway, shared_cpu_node, user):
    alice, bob = user + "-a", user + "-b"
    key_a = gateway.create_key(alice, roles=("node",))
    key_b = gateway.create_key(bob, roles=("user",))
    # Given bob's normal round trip, measured now (the median of three: the machine is shared)
    normal = statistics.median(_timed_job(gateway, key_b) for _ in range(3))
    dropped_before = _unknown_job_drops(gateway)
    over_quota_before = metric(gateway.url, "gpubus_dropped_events_total", reason="over_quota")
    nc = await connect_as_node(nats_server, key_a, alice)
    try:
        # When alice's node floods 2,000 progress events for job ids that do not exist
        for _ in range(2000):
            job_id = new_job_id()
            await nc.publish(
                names.event_subject(alice, job_id), _event(alice, job_id, EventType.PROGRESS, progress=0.5)
            )
        await nc.flush()
        t_flood = time.monotonic()
        # ...and bob submits a job at the same time
        flooded = _timed_job(gateway, key_b)
        wait_until(
            lambda: _unknown_job_drops(gateway) >= dropped_before + 2000,
            timeout_s=30,
            what="the flood dropped",
            interval_s=0.05,
        )
        drained = time.monotonic() - t_flood
    finally:
        await nc.close()
    unread = metric(gateway.url, "gpubus_dropped_events_total", reason="over_quota") - over_quota_before
    print(f"bob's job: {normal:.2f}s normally, {flooded:.2f}s during the flood; flood dropped in {drained:.2f}s")
    # Then all but the first few hundred flood events were dropped by their
    # subject alone (no look-up, no wait); bob's job was not held up by
    # waits (before the fix: 14 s; the slack is for a busy CI machine, where
    # the other test worker shares the 2 cores); and the log got a handful of lines
    assert unread >= 2000 - 4 * UNKNOWN_JOB_QUOTA, unread
    assert flooded <= 2 * normal + 1.0, (normal, flooded)
    lines = [ln for ln in gateway.proc.log().splitlines() if alice in ln and "drop" in ln]
    assert len(lines) <= 5, lines[:10]


# F14: expired keys


async def test_expired_node_key_loses_its_live_connection(nats_server, gateway, user):
    key = gateway.create_key(user, roles=("node",), expires_days=4 / 86_400)
    expires_at = time.time() + 4
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    nc = await connect_as_node(nats_server, key, user, closed_cb=on_closed)
    try:
        # Given the node's connection works before the key expires
        info = await nc.jetstream(prefix=node_permissions.NODE_JS_API).consumer_info(
            names.JOBS_STREAM, names.consumer_name(user, Lane.CPU)
        )
        assert info.name == names.consumer_name(user, Lane.CPU)
        # Then the server closes it within a few seconds of the expiry
        await asyncio.wait_for(closed.wait(), timeout=expires_at - time.time() + 5)
        assert time.time() >= expires_at - 1.5
    finally:
        await nc.close()
