"""Schedule-to-start: GPU-lane jobs no node starts in time move to the CPU
lane, exactly once, whoever wins the race (bus/start_claims.py,
bus/start_deadline.py). Real servers, real processes, kill -9."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from bus import node_permissions, start_claims
from ops.embedded_nats import NatsServer
from schemas.jobs import new_job_id
from tests import busreader
from tests.harness import TESTDATA, Gateway, connect_as_node, start_node, stop_all, submit_file, wait_job, wait_until
from tests.media_files import wav_of_seconds

pytestmark = pytest.mark.timeout(240)


def test_node_and_mover_claims_one_winner_per_attempt(nats_server, gateway, user):
    """Given a node's connection and the trusted side's, racing for the
    same attempts: exactly one claim wins each, and the mover recognises
    its own earlier claim; a node cannot claim another owner's job."""
    key = gateway.create_key(user)

    async def race() -> tuple[list[tuple[bool, bool]], bool, bool]:
        node_nc = await connect_as_node(nats_server, key, user)
        app_nc = await nats.connect(nats_server.url)
        try:
            node_js = node_nc.jetstream(prefix=node_permissions.NODE_JS_API)
            app_js = app_nc.jetstream()
            outcomes = []
            for _ in range(20):
                job_id = new_job_id()
                node_won, mover_won = await asyncio.gather(
                    start_claims.node_may_start(node_js, user, job_id, 1, num_delivered=1),
                    start_claims.mover_holds(app_js, user, job_id, 1),
                )
                outcomes.append((node_won, mover_won))
            moved = new_job_id()
            again = await start_claims.mover_holds(app_js, user, moved, 2) and await start_claims.mover_holds(
                app_js, user, moved, 2
            )
            node_after_mover = await start_claims.node_may_start(node_js, user, moved, 2, num_delivered=1)
            return outcomes, again, node_after_mover
        finally:
            await node_nc.close()
            await app_nc.close()

    outcomes, again, node_after_mover = asyncio.run(race())
    assert all(node != mover for node, mover in outcomes), outcomes
    assert again and not node_after_mover

    async def foreign() -> None:
        nc = await connect_as_node(nats_server, key, user)
        try:
            js = nc.jetstream(prefix=node_permissions.NODE_JS_API)
            await start_claims.claim(js, "someone-else", new_job_id(), 1, start_claims.NODE)
        finally:
            await nc.close()

    with pytest.raises((nats.errors.Error, TimeoutError)):  # refused: the publish goes unanswered
        asyncio.run(asyncio.wait_for(foreign(), timeout=5))


def _one_running_two_queued(gw: Gateway, user: str):
    """An owner with a GPU node of capacity 1: one long job running, two queued behind it."""
    key = gw.create_key(user)
    gpu = start_node(gw, "gpu", key=key, name=f"gpu-{user}", node_concurrency=1)
    c = gw.client(key)
    running = submit_file(c, TESTDATA / "long.wav", gpu=True)
    queued = [submit_file(c, TESTDATA / "hello.wav", gpu=True) for _ in range(2)]
    assert all(j["lane"] == "gpu" for j in [running, *queued])
    wait_until(
        lambda: c.get(f"/api/v1/jobs/{running['job_id']}").json()["status"] == "running",
        timeout_s=60,
        what="first job running on the GPU node",
    )
    assert all(c.get(f"/api/v1/jobs/{j['job_id']}").json()["status"] == "queued" for j in queued)
    return c, gpu, running, queued


def _all_on_cpu_once(gw: Gateway, c, user: str, running, queued, killed_wall: float, within_s: float) -> list[float]:
    finals = [wait_job(c, j["job_id"], timeout_s=150) for j in [running, *queued]]
    assert all(f["status"] == "succeeded" and f["lane"] == "cpu" for f in finals), finals
    assert finals[0]["fallback"]["reason"] == "ack_timeout"
    delays = [f["fallback"]["at"] - killed_wall for f in finals[1:]]
    # The GPU node takes one job ahead of its engine (GPUBUS_NODE_PREFETCH, 1 on GPU) without
    # starting it: that one was delivered to the dead node, so whichever comes first moves it, its
    # expired delivery (ack_timeout) or its start deadline (not_started); the other was never delivered
    reasons = sorted(f["fallback"]["reason"] for f in finals[1:])
    assert reasons in (["ack_timeout", "not_started"], ["not_started", "not_started"]), finals
    assert all(f["attempts"] == 2 for f in finals[1:]), finals
    assert all(d < within_s for d in delays), delays
    counts = busreader.terminal_counts(gw.nats_url, user)
    assert counts == {f["job_id"]: 1 for f in finals}, counts
    return delays


def _gateway(server: NatsServer, workdir: Path, **settings) -> Gateway:
    return Gateway.on(server, workdir, gpu_ack_wait=3, start_scan_interval=0.5, **settings).start()


def test_queued_gpu_jobs_move_to_cpu_after_the_start_timeout(fresh_nats, tmp_path, user):
    # Given a GPU node with one job running and two queued, start timeout 6 s
    timeout_s = 6
    gw = _gateway(fresh_nats, tmp_path, gpu_start_timeout=timeout_s)
    cpu = start_node(gw, "cpu", shared=True, name="shared-cpu")
    try:
        c, gpu, running, queued = _one_running_two_queued(gw, user)
        # When the GPU node is killed -9
        gpu.kill()
        killed = time.time()
        # Then all three finish on CPU, the queued two moved within timeout + 5 s, none twice
        delays = _all_on_cpu_once(gw, c, user, running, queued, killed, timeout_s + 5)
        print(f"queued jobs moved {[round(d, 2) for d in delays]} s after the kill (start timeout {timeout_s} s)")
    finally:
        stop_all([cpu])
        gw.stop()


def test_jobs_of_a_vanished_gpu_node_move_at_once_across_a_gateway_restart(fresh_nats, tmp_path, user):
    # Given a long start timeout but a short registry TTL, one job running and two queued
    timeout_s, ttl_s = 60, 3
    gw = _gateway(fresh_nats, tmp_path, gpu_start_timeout=timeout_s, registry_ttl=ttl_s)
    cpu = start_node(gw, "cpu", shared=True, name="shared-cpu")
    try:
        c, gpu, running, queued = _one_running_two_queued(gw, user)
        # When the GPU node is killed -9 and the gateway restarts during the wait
        gpu.kill()
        killed = time.time()
        gw.stop()
        gw.start()
        # Then the node's expired heartbeat moves the queued two at once (not after 60 s), none twice
        delays = _all_on_cpu_once(gw, c, user, running, queued, killed, ttl_s + 5)
        print(f"queued jobs moved {[round(d, 2) for d in delays]} s after the kill (registry TTL {ttl_s} s)")
    finally:
        stop_all([cpu])
        gw.stop()


def test_gpu_required_job_fails_no_gpu_node_after_its_start_timeout(gateway, user):
    # Given an owner with no GPU node, a job that requires one, start timeout 2 s
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav", gpu="required", options='{"start_timeout_s": 2}')
        # Then it waits on the GPU lane (not sent to CPU for want of a node)...
        assert job["lane"] == "gpu" and job["routed_reason"] == "gpu_required", job
        t0 = time.monotonic()
        # ...and fails NO_GPU_NODE once its start timeout has passed, never run anywhere
        final = wait_job(c, job["job_id"], timeout_s=30)
        assert final["status"] == "failed" and final["error"]["code"] == "NO_GPU_NODE", final
        assert final["attempts"] == 1 and final.get("fallback") is None
        assert 1.5 < time.monotonic() - t0 < 2 + 3
        # And a value that is neither boolean nor "required" is a 422
        bad = c.post("/api/v1/jobs", files={"file": ("a.wav", b"RIFF")}, data={"gpu": "sometimes"})
        assert bad.status_code == 422 and "required" in bad.json()["error"]["message"]
    assert busreader.terminal_counts(gateway.nats_url, user) == {}


def test_a_job_taken_ahead_of_a_busy_engine_moves_at_its_start_timeout(fresh_nats, tmp_path, user):
    """A live GPU node busy with a long job has taken the next one ahead of
    its engine (prefetch): taken is not started, so at its start timeout it
    moves to the CPU lane, and the GPU node never runs it."""
    # Given a GPU node of capacity 1 and prefetch 1, a long job running and one taken behind it
    timeout_s = 5
    gw = _gateway(fresh_nats, tmp_path, gpu_start_timeout=timeout_s)
    cpu = start_node(gw, "cpu", shared=True, name="shared-cpu")
    key = gw.create_key(user)
    gpu = start_node(gw, "gpu", key=key, name=f"gpu-{user}", node_concurrency=1, node_prefetch=1)
    try:
        c = gw.client(key)
        lecture = wav_of_seconds(TESTDATA / "long.wav", 600, tmp_path / "lecture.wav")
        running = submit_file(c, lecture, gpu=True)
        wait_until(
            lambda: c.get(f"/api/v1/jobs/{running['job_id']}").json()["status"] == "running",
            timeout_s=60,
            what="first job running on the GPU node",
        )
        behind = submit_file(c, TESTDATA / "hello.wav", gpu=True)
        # When its start timeout passes while the node is still busy
        final = wait_job(c, behind["job_id"], timeout_s=60)
        first = wait_job(c, running["job_id"], timeout_s=150)
        # Then it ran on CPU as not_started, once, and the long one finished on the GPU node
        assert final["status"] == "succeeded" and final["lane"] == "cpu", final
        assert final["fallback"]["reason"] == "not_started" and final["attempts"] == 2, final
        assert first["status"] == "succeeded" and first["lane"] == "gpu", first
        assert final["finished_at"] < first["finished_at"], "it waited for the engine instead of moving"
        counts = busreader.terminal_counts(gw.nats_url, user)
        assert counts == {running["job_id"]: 1, behind["job_id"]: 1}, counts
    finally:
        stop_all([gpu, cpu])
        gw.stop()
