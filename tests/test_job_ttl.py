"""Time to live (bus/job_ttl.py): a job not finished by `options.ttl_s`
ends `expired`, its node is told to stop and is free for the next job."""

from __future__ import annotations

import time

import pytest

from schemas.events import EventType
from tests import busreader
from tests.harness import TESTDATA, metric, start_node, submit_file, wait_job, wait_until
from tests.media_files import wav_of_seconds

pytestmark = pytest.mark.timeout(180)


def test_job_past_its_ttl_expires_and_frees_its_node(gateway, user, tmp_path):
    # Given the owner's own CPU node (capacity 1) running a 185 s recording (under the 8 MiB upload cap) with a 3 s TTL
    # (long.wav's 77 s alone took an idle node under 2 s: the job finished before its TTL)
    lecture = wav_of_seconds(TESTDATA / "long.wav", 185, tmp_path / "lecture.wav")
    key = gateway.create_key(user)
    node = start_node(gateway, "cpu", key=key, name=f"cpu-{user}")
    expired_before = metric(gateway.url, "gpubus_jobs_expired_total", lane="cpu", kind="audio")
    try:
        with gateway.client(key) as c:
            job = submit_file(c, lecture, options='{"ttl_s": 3}')
            assert job["lane"] == "cpu", job
            wait_until(
                lambda: c.get(f"/api/v1/jobs/{job['job_id']}").json()["status"] == "running",
                timeout_s=30,
                what="job running",
            )
            # When its TTL passes
            final = wait_job(c, job["job_id"], timeout_s=30)
            # Then it is expired within 4 s of being queued, with its own code
            assert final["status"] == "expired" and final["error"]["code"] == "EXPIRED", final
            assert final["finished_at"] - final["created_at"] < 4, final
            # ...the node stops it and takes the next job at once
            t0 = time.monotonic()
            nxt = wait_job(c, submit_file(c, TESTDATA / "hello.wav")["job_id"], timeout_s=60)
            assert nxt["status"] == "succeeded" and nxt["node_id"] == final["node_id"], nxt
            print(f"next job on the freed node done in {time.monotonic() - t0:.1f} s")
            # ...and a later outcome from the node never changes the record
            again = c.get(f"/api/v1/jobs/{job['job_id']}").json()
            assert again["status"] == "expired" and again["late_completions"] == 0, again
        events = busreader.events(gateway.nats_url, user)
        assert [e.type for e in events if e.job_id == job["job_id"] and e.terminal] == [EventType.CANCELLED]
        assert metric(gateway.url, "gpubus_jobs_expired_total", lane="cpu", kind="audio") == expired_before + 1
    finally:
        node.stop()


def test_queued_job_past_its_ttl_expires_without_running(gateway, user):
    # Given a job that waits with no node at all to take it (GPU required, no GPU node), TTL 1.5 s
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav", gpu="required", options='{"ttl_s": 1.5}')
        final = wait_job(c, job["job_id"], timeout_s=30)
        # Then it expires (before its 120 s start timeout), never run, and may be retried
        assert final["status"] == "expired" and final.get("node_id") is None, final
        assert final["finished_at"] - final["created_at"] < 3, final
        r = c.post(f"/api/v1/jobs/{job['job_id']}/retry")
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        assert c.post(f"/api/v1/jobs/{job['job_id']}/cancel").status_code == 200
    assert busreader.terminal_counts(gateway.nats_url, user) == {}
