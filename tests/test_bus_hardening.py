"""What a hostile node of one user can do to the shared gateway side, on a
real server through a real node identity (auth callout), and what the
gateway does about it: the security review's F2, F4, F6, F7 and F14."""

from __future__ import annotations

import json
import time

import nats
import pytest

from bus.topology import EVENT_MAX_BYTES
from schemas import codec, names
from schemas.events import EventType, JobEvent
from schemas.jobs import ErrorInfo
from schemas.names import Lane
from tests.harness import TESTDATA, connect_as_node, metric, submit_file, wait_until

pytestmark = pytest.mark.timeout(180)


def _heartbeat(owner: str, lane: str, node_id: str, **kw) -> bytes:
    base = dict(node_id=node_id, owner=owner, lane=lane, device="cpu", kinds=["audio", "video", "url"],
                models=["tiny.en", "large-v3"], capacity=8, busy=0, last_seen=time.time(), started_at=time.time(),
                metrics_url="http://127.0.0.1:9/metrics")
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




# F4: bounded events and records


async def _park_a_job(nats_server, gateway, key: str, owner: str, nc) -> str:
    """A job queued on the owner's own CPU lane, where nobody pulls: a
    heartbeat of a (fake) CPU node of the owner makes the gateway route it
    there, so the shared pool never runs it and events can be forged for it."""
    await nc.jetstream().publish(f"$KV.nodes.{owner}.cpu.parking", _heartbeat(owner, "cpu", "parking"))
    wait_until(lambda: any(n["node_id"] == "parking" for n in _workers(gateway, key)), timeout_s=10,
               what="the parking node live")
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
        await js.publish(subject, _event(user, job_id, EventType.SUCCEEDED,
                                         result_object=names.result_object(job_id, 1)))
    finally:
        await nc.close()
    wait_until(lambda: _record(gateway, key, job_id)["status"] == "succeeded", timeout_s=15, what="the true outcome")
    rec = _record(gateway, key, job_id)
    # Then only the true one counted: the record is small and points at the attempt's own result
    assert rec["result_object"] == names.result_object(job_id, 1) and rec["node_id"] == "cpu-test"
    assert rec.get("late_completions", 0) == 0 and "error" not in rec
    assert len(json.dumps(rec)) < 4096
    assert metric(gateway.url, "gpubus_bad_events_total") >= bad_before + 3
