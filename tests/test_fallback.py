"""Fault tests: GPU nodes die, hang, stop and get cancelled; no job is lost
or shown twice. Real processes, real signals (the session gateway has
gpu_ack_wait=3 s and gpu_max_deliver=1)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from schemas.events import EventType
from tests import busreader
from tests import document_files as files
from tests.harness import TESTDATA, metric, start_node, submit_file, wait_job, wait_until, words

pytestmark = pytest.mark.timeout(240)
ACK_WAIT_S = 3


def _running_with_progress(c, job_id: str, node_prefix: str):
    def check():
        j = c.get(f"/api/v1/jobs/{job_id}").json()
        return j if j["status"] == "running" and j["node_id"].startswith(node_prefix) and j["progress"] > 0 else None

    return wait_until(check, timeout_s=90, what=f"job {job_id} running on {node_prefix}")


def _long_tiff(tmp_path: Path) -> Path:
    """Pages enough that OCR on the CPU takes a while: the kill lands after
    the first page's progress, with seven still to go."""
    return files.multipage_tiff(tmp_path / "scan.tiff", [files.OCR_LINES] * 8, compression="tiff_deflate")


# (kind, a long input of it, a word its result must have)
LONG_JOBS = [
    ("audio", lambda tmp_path: TESTDATA / "long.wav", "section"),
    ("image", _long_tiff, "quick"),
]


@pytest.mark.parametrize(("kind", "make_input", "word"), LONG_JOBS, ids=[k for k, _, _ in LONG_JOBS])
def test_gpu_node_killed_mid_job_falls_back_to_cpu(gateway, shared_cpu_node, user, tmp_path, kind, make_input, word):
    # Given a GPU node working on a long job (transcription, OCR of many pages)
    key = gateway.create_key(user)
    gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    fallbacks = metric(gateway.url, "gpubus_jobs_fallback_total", reason="ack_timeout", kind=kind)
    with gateway.client(key) as c:
        job = submit_file(c, make_input(tmp_path), gpu=True)
        assert job["lane"] == "gpu" and c.get(f"/api/v1/jobs/{job['job_id']}").json()["kind"] == kind
        _running_with_progress(c, job["job_id"], "gpu-")
        # When the node is killed -9 mid-transcription
        gpu.kill()
        killed_at = time.monotonic()
        # Then a CPU node finishes it: attempt 2, fallback recorded
        final = wait_job(c, job["job_id"], timeout_s=150)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2 and final["lane"] == "cpu" and final["node_id"].startswith("cpu-")
        assert final["fallback"]["from"] == "gpu" and final["fallback"]["reason"] == "ack_timeout"
        assert final["fallback"]["at"] - final["created_at"] > 0
        fallback_delay = final["fallback"]["at"] - (time.time() - (time.monotonic() - killed_at))
        assert fallback_delay < ACK_WAIT_S + 5, fallback_delay
        assert word in words(c.get(f"/api/v1/jobs/{job['job_id']}/result?format=text").text)
    assert busreader.terminal_counts(gateway.nats_url, user) == {job["job_id"]: 1}
    assert metric(gateway.url, "gpubus_jobs_fallback_total", reason="ack_timeout", kind=kind) == fallbacks + 1


def test_stopped_gpu_node_wakes_late_first_terminal_wins(gateway, shared_cpu_node, user):
    # Given a GPU node transcribing a long file
    key = gateway.create_key(user)
    gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    late_before = metric(gateway.url, "gpubus_late_completions_total", lane="cpu")
    try:
        with gateway.client(key) as c:
            job = submit_file(c, TESTDATA / "long.wav", gpu=True)
            _running_with_progress(c, job["job_id"], "gpu-")
            # When it is frozen (SIGSTOP: its TCP connection stays open) past ack_wait
            gpu.signal(signal.SIGSTOP)
            fell_back = wait_until(
                lambda: (j := c.get(f"/api/v1/jobs/{job['job_id']}").json())["attempts"] == 2 and j,
                timeout_s=ACK_WAIT_S + 30,
                what="fallback",
            )
            assert fell_back["fallback"]["reason"] == "ack_timeout"
            # ...and the CPU node finishes first
            final = wait_job(c, job["job_id"], timeout_s=150)
            assert final["status"] == "succeeded" and final["node_id"].startswith("cpu-")
            # Then the GPU node wakes, finishes too: counted, never shown
            gpu.signal(signal.SIGCONT)
            late = wait_until(
                lambda: (j := c.get(f"/api/v1/jobs/{job['job_id']}").json())["late_completions"] == 1 and j,
                timeout_s=120,
                what="late completion counted",
            )
            assert late["status"] == "succeeded" and late["node_id"] == final["node_id"]
            assert late.get("result_sha256") == final.get("result_sha256")  # the CPU node's result stays
            assert late["finished_at"] == final["finished_at"]
            late_after = metric(gateway.url, "gpubus_late_completions_total", lane="cpu")
            assert late_after == late_before + 1
        evs = busreader.events(gateway.nats_url, user)
        terminal = [(e.attempt, e.node_id[:4]) for e in evs if e.terminal]
        assert sorted(terminal) == [(1, "gpu-"), (2, "cpu-")]
    finally:
        gpu.stop()


def test_sigterm_mid_job_lets_it_finish_on_the_node(gateway, user):
    key = gateway.create_key(user)
    cpu = start_node(gateway, "cpu", key=key, name=f"cpu-{user}", drain_timeout=120)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "long.wav")
        assert job["lane"] == "cpu"
        running = _running_with_progress(c, job["job_id"], "cpu-")
        cpu.signal(signal.SIGTERM)
        assert cpu.proc.wait(150) == 0, cpu.log()[-2000:]
        final = wait_job(c, job["job_id"], timeout_s=10)
        assert final["status"] == "succeeded" and final["node_id"] == running["node_id"] and final["attempts"] == 1
        assert not any(n["node_id"] == running["node_id"] for n in gateway.live_nodes())  # left the registry


def test_sigterm_past_grace_hands_the_job_on_at_once(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{user}", drain_timeout=0)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "long.wav", gpu=True)
        _running_with_progress(c, job["job_id"], "gpu-")
        gpu.signal(signal.SIGTERM)
        assert gpu.proc.wait(30) == 0, gpu.log()[-2000:]
        # given back on the way out (its last GPU delivery): the CPU lane at once
        final = wait_job(c, job["job_id"], timeout_s=150)
        assert final["status"] == "succeeded" and final["attempts"] == 2 and final["node_id"].startswith("cpu-")
        assert final["fallback"]["reason"] == "node_released"


def test_cancel_queued_and_running_then_node_goes_on(gateway, user):
    key = gateway.create_key(user)
    gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    try:
        with gateway.client(key) as c:
            running = submit_file(c, TESTDATA / "long.wav", gpu=True)
            _running_with_progress(c, running["job_id"], "gpu-")
            queued = submit_file(c, TESTDATA / "hello.wav", gpu=True)  # capacity 1: it waits
            assert queued["lane"] == "gpu"
            # cancel the queued one: it never starts
            r = c.post(f"/api/v1/jobs/{queued['job_id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            # cancel the running one: its node stops working on it
            r = c.post(f"/api/v1/jobs/{running['job_id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            # the node frees itself and takes the next job
            nxt = submit_file(c, TESTDATA / "hello.wav", gpu=True)
            assert wait_job(c, nxt["job_id"], timeout_s=60)["status"] == "succeeded"
            # finished jobs cannot be cancelled; cancelled ones stay cancelled
            assert c.post(f"/api/v1/jobs/{nxt['job_id']}/cancel").status_code == 409
            assert c.post(f"/api/v1/jobs/{running['job_id']}/cancel").status_code == 409
            assert c.get(f"/api/v1/jobs/{running['job_id']}").json()["status"] == "cancelled"
            assert c.get(f"/api/v1/jobs/{queued['job_id']}").json()["status"] == "cancelled"
        evs = busreader.events(gateway.nats_url, user)
        assert not [e for e in evs if e.job_id == queued["job_id"]]  # never started anywhere
        run_evs = [e.type for e in evs if e.job_id == running["job_id"]]
        assert EventType.STARTED in run_evs and EventType.CANCELLED in run_evs
        assert EventType.SUCCEEDED not in run_evs
    finally:
        gpu.stop()


def test_retry_failed_job_fails_again_same_code(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "garbage.bin")
        first = wait_job(c, job["job_id"])
        assert first["status"] == "failed" and first["error"]["code"] == "DECODE_FAILED"
        r = c.post(f"/api/v1/jobs/{job['job_id']}/retry")
        assert r.status_code == 202 and r.json()["attempts"] == 2 and r.json()["status"] == "queued"
        again = wait_until(
            lambda: (
                (j := c.get(f"/api/v1/jobs/{job['job_id']}").json())["status"] == "failed" and j["attempts"] == 2 and j
            ),
            timeout_s=60,
            what="retry fails again",
        )
        assert again["error"] == first["error"]
        ok = submit_file(c, TESTDATA / "hello.wav")
        assert wait_job(c, ok["job_id"])["status"] == "succeeded"
        assert c.post(f"/api/v1/jobs/{ok['job_id']}/retry").status_code == 409
        assert c.post("/api/v1/jobs/j" + "0" * 32 + "/retry").status_code == 404
