"""kill -9 the nats-server (and restart it on the same store) while jobs are
being submitted and processed: every job answered 202 succeeds exactly once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests import busreader
from tests.harness import Gateway, start_node, wait_until

pytestmark = pytest.mark.timeout(240)
JOBS = 200


def test_nats_killed_and_restarted_mid_stream_loses_nothing(fresh_nats, tmp_path):
    # Given a gateway, the user's CPU node and a shared-pool node on a server of our own
    # (while NATS is down nodes cannot heartbeat, so jobs submitted just after the
    # restart may go to the shared pool until the user's node is seen again)
    gw = Gateway.on(fresh_nats, tmp_path, enable_noop="true", publish_timeout=30).start()
    key = gw.create_key("crash")
    node = start_node(gw, "cpu", key=key, name="cpu-crash", enable_noop="true")
    shared = start_node(gw, "cpu", shared=True, name="cpu-shared", enable_noop="true")
    accepted: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()

    def submit(_: int) -> None:
        with gw.client(key) as c:
            try:
                r = c.post("/api/v1/jobs", json={"kind": "noop"}, timeout=60)
            except httpx.HTTPError:
                with lock:
                    refused.append(0)
                return
        with lock:
            if r.status_code == 202:
                accepted.append(r.json()["job_id"])
            else:
                assert r.status_code == 503, r.text  # refused cleanly, never a 500
                refused.append(r.status_code)

    try:
        # When the server is killed -9 a third of the way in, and restarted
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(submit, i) for i in range(JOBS)]
            wait_until(lambda: len(accepted) >= JOBS // 3, timeout_s=60, what="a third accepted")
            fresh_nats.kill()
            time.sleep(2)
            fresh_nats.start()
            for f in futures:
                f.result()
        print(f"\naccepted {len(accepted)}, refused {len(refused)}")
        assert len(accepted) >= JOBS * 0.9 and len(accepted) + len(refused) == JOBS

        # Then every accepted job succeeds, exactly once
        with gw.client(key) as c:

            def all_done():
                jobs = c.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]
                done = {j["job_id"] for j in jobs if j["status"] == "succeeded"}
                return done if done >= set(accepted) else None

            wait_until(all_done, timeout_s=120, what="all accepted jobs succeeded", interval_s=0.5)
            jobs = c.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]
        assert {j["job_id"] for j in jobs} == set(accepted)  # no phantom records either
        assert all(j["status"] == "succeeded" and j["late_completions"] == 0 for j in jobs)
        counts = busreader.terminal_counts(fresh_nats.url, "crash")
        assert counts == {j: 1 for j in accepted}

        # And a long poll after the restart still answers the moment its job
        # is done (the gateway's finish watch came back with the server), not
        # on its 5 s safety re-read
        with gw.client(key) as c:
            for _ in range(3):
                t0 = time.monotonic()
                job = c.post("/api/v1/jobs", json={"kind": "noop"}).json()
                r = c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"wait": 30}, timeout=40)
                assert r.status_code == 200 and time.monotonic() - t0 < 2.5, (r.text, time.monotonic() - t0)
    finally:
        node.stop()
        shared.stop()
        gw.stop()


@pytest.mark.parametrize(
    ("query", "down_after_s", "down_for_s"),
    [
        # authenticated while NATS is away: the key's revocation can only be checked in KV
        ({}, 0.0, 7.0),
        # a long poll authenticated before, whose safety re-read of the record
        # (bus/jobstore.RECHECK_S) times out during the outage
        ({"wait": 18}, 1.0, 11.0),
    ],
    ids=["read", "long-poll"],
)
def test_a_status_read_rides_out_a_nats_outage_longer_than_a_request(
    fresh_nats, tmp_path, query, down_after_s, down_for_s
):
    # Given a queued job's record (no node: it stays queued)
    gw = Gateway.on(fresh_nats, tmp_path, enable_noop="true", publish_timeout=30).start()
    try:
        key = gw.create_key("reader")
        with gw.client(key) as c:
            job_id = c.post("/api/v1/jobs", json={"kind": "noop"}).json()["job_id"]
        answers: list[httpx.Response] = []

        def read() -> None:
            with gw.client(key) as c:
                answers.append(c.get(f"/api/v1/jobs/{job_id}", params=query, timeout=60))

        # When the server goes down for longer than one NATS request's timeout
        # while the client reads the job's status, and then comes back
        reader = threading.Thread(target=read)
        if down_after_s:
            reader.start()
            time.sleep(down_after_s)
        fresh_nats.kill()
        if not down_after_s:
            reader.start()
        time.sleep(down_for_s)
        fresh_nats.start()
        reader.join(60)
        # Then the read is answered with the record, not a 503
        (r,) = answers
        assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    finally:
        gw.stop()
