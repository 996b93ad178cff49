"""Many jobs, two nodes: every one succeeds, exactly once."""

from __future__ import annotations

import time

import pytest

from tests import busreader
from tests.harness import TESTDATA, start_node, submit_file, wait_until

pytestmark = pytest.mark.timeout(300)

JOBS = 50


def test_fifty_jobs_two_nodes_exactly_once(gateway, user):
    # Given two CPU nodes of one user
    key = gateway.create_key(user)
    nodes = [start_node(gateway, "cpu", key=key, name=f"cpu{i}-{user}") for i in range(2)]
    try:
        with gateway.client(key) as c:
            # When 50 jobs are submitted at once
            t0 = time.monotonic()
            ids = [submit_file(c, TESTDATA / "numbers.wav")["job_id"] for _ in range(JOBS)]

            # Then all 50 succeed
            def all_done():
                jobs = c.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]
                return jobs if sum(j["status"] == "succeeded" for j in jobs) == JOBS else None

            jobs = wait_until(all_done, timeout_s=240, what=f"{JOBS} jobs succeeded", interval_s=0.5)
            elapsed = time.monotonic() - t0
        print(f"\n{JOBS} jobs on 2 CPU nodes in {elapsed:.1f}s ({JOBS / elapsed:.2f} jobs/s)")
        assert sorted(j["job_id"] for j in jobs) == sorted(ids)
        assert all(j["lane"] == "cpu" and j["queue_owner"] == user for j in jobs)
        assert all(j["attempts"] == 1 and j["late_completions"] == 0 for j in jobs)
        # ...both nodes took part, and exactly one terminal event exists per job
        assert len({j["node_id"] for j in jobs}) == 2
        assert busreader.terminal_counts(gateway.nats_url, user) == {i: 1 for i in ids}
    finally:
        for n in nodes:
            n.stop()
