"""Fair share on the shared pool and priorities (bus/intake.py), through
real processes: a gateway, a shared-pool node and a user's own node, each
running the `noop` kind at 0.2 s a job with capacity 1, so the order in
which jobs start is the order the node took them in.

Measured from the job records' `started_at` (when the node started the
job), against when a job's 202 came back (it comes once the job is stored;
`created_at` is earlier, before the record is written).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import pytest

from ops.embedded_nats import NatsServer
from ops.nats_identity import NatsAuth
from schemas import names
from tests.harness import Gateway, Proc, start_node, stop_all, wait_job, wait_until

pytestmark = pytest.mark.timeout(240)

JOB_S = 0.2
NODE = {"node_concurrency": 1, "enable_noop": "true", "noop_seconds": JOB_S}


@dataclass
class Env:
    gw: Gateway
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("fair")
    server = NatsServer(store_dir=workdir / "nats", auth=NatsAuth.generate()).start()
    gw = Gateway.on(server, workdir, enable_noop="true", lag_poll_interval=0.5).start()
    e = Env(gw)
    e.procs.append(start_node(gw, "cpu", shared=True, name="pool", **NODE))
    yield e
    stop_all([*e.procs, gw.proc], timeout_s=5)
    server.stop()


def submit_noops(c: httpx.Client, n: int, **fields: Any) -> list[str]:
    """`n` noop jobs, 8 requests at a time; their ids in submission order."""

    def one(_: int) -> str:
        r = c.post("/api/v1/jobs", json={"kind": "noop", **fields})
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def records(c: httpx.Client, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each job's record by its id (a listing of the owner's jobs, read while
    the node keeps rewriting them, once came back one short)."""

    def one(job_id: str) -> dict[str, Any]:
        r = c.get(f"/api/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        return dict(zip(ids, pool.map(one, ids), strict=True))


def started_between(recs: dict[str, dict[str, Any]], ids: list[str], after: float, before: float) -> int:
    """How many of `ids` started after `after` and before `before`."""
    return sum(1 for i in ids if after < (recs[i].get("started_at") or float("inf")) < before)


def cancel_queued(c: httpx.Client, ids: list[str]) -> None:
    """The rest of a backlog goes, so the next test finds the node idle."""
    recs = records(c, ids)
    for i in ids:
        if recs[i]["status"] == "queued":
            c.post(f"/api/v1/jobs/{i}/cancel")


def busy_with(c: httpx.Client, ids: list[str]) -> None:
    """Wait until the node has started some of `ids`: a backlog forms behind it."""
    wait_until(
        lambda: any(r.get("started_at") for r in records(c, ids[:20]).values()),
        timeout_s=30,
        what="the node busy with the backlog",
    )


def test_one_owner_backlog_does_not_hold_back_another_on_the_shared_pool(env: Env) -> None:
    """Given a shared node of capacity 1 (0.2 s a job) and owner A's 200
    queued jobs, when owner B submits one, then B's job starts before A's
    10th after it (in round-robin: within about one of A's jobs)."""
    a_key, b_key = env.gw.create_key("fair-a"), env.gw.create_key("fair-b")
    with env.gw.client(a_key) as a, env.gw.client(b_key) as b:
        a_ids = submit_noops(a, 200)
        busy_with(a, a_ids)
        [b_id] = submit_noops(b, 1)
        stored = time.time()  # the 202 comes once the job is stored
        b_job = wait_job(b, b_id, timeout_s=60)
        a_recs = records(a, a_ids)
        assert b_job["status"] == "succeeded", b_job
        assert b_job["queue_owner"] == "shared"
        waited_in_a_jobs = started_between(a_recs, a_ids, stored, b_job["started_at"])
        still_queued = sum(1 for i in a_ids if a_recs[i]["status"] == "queued")
        print(
            f"\nB's job waited {b_job['started_at'] - b_job['created_at']:.2f} s, "
            f"{waited_in_a_jobs} of A's jobs started before it; {still_queued} of A's were still queued"
        )
        assert still_queued >= 100, "A's backlog must still be there when B's job starts"
        assert waited_in_a_jobs < 10
        assert waited_in_a_jobs <= 2  # round-robin: at most the job A's turn had begun, and one more
        cancel_queued(a, a_ids)


def high_is_next(c: httpx.Client, low_ids: list[str]) -> int:
    """Submits one high job; returns how many low jobs started after it
    was stored (its 202) and before it began."""
    [high_id] = submit_noops(c, 1, priority="high")
    stored = time.time()
    high = wait_job(c, high_id, timeout_s=60)
    assert high["status"] == "succeeded", high
    assert high["priority"] == "high"
    recs = records(c, low_ids)
    between = started_between(recs, low_ids, stored, high["started_at"])
    queued_low = sum(1 for i in low_ids if recs[i]["status"] == "queued")
    print(f"\nhigh job waited {high['started_at'] - high['created_at']:.2f} s; {between} low job(s) started first")
    assert queued_low >= 30, "the low backlog must still be waiting when the high job starts"
    cancel_queued(c, low_ids)
    return between


def test_high_job_is_next_on_the_shared_pool(env: Env) -> None:
    """Given 50 low jobs of one owner queued on the shared pool, when it
    submits one high job, then that one is the next of its jobs to start."""
    key = env.gw.create_key("prio-pool")
    with env.gw.client(key) as c:
        low_ids = submit_noops(c, 50, priority="low")
        busy_with(c, low_ids)
        assert high_is_next(c, low_ids) <= 1  # one may be taken as the high job is stored


def test_high_job_is_next_on_the_owners_own_node(env: Env) -> None:
    """The same on a user's own CPU node (its consumers `cpu-low_<user>`,
    `cpu-high_<user>`, pulled through the NODES account)."""
    user = "prio-own"
    key = env.gw.create_key(user)
    env.procs.append(start_node(env.gw, "cpu", key=key, name="own", **NODE))
    with env.gw.client(key) as c:
        low_ids = submit_noops(c, 50, priority="low")
        busy_with(c, low_ids)
        assert records(c, low_ids[:1])[low_ids[0]]["queue_owner"] == user
        assert high_is_next(c, low_ids) <= 1


def waiting_pulls(nats_url: str, consumer: str) -> int:
    """Pull requests the server holds open on a consumer of JOBS."""

    async def get() -> int:
        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().consumer_info(names.JOBS_STREAM, consumer)).num_waiting
        finally:
            await nc.close()

    return asyncio.run(get())


def test_an_idle_own_node_keeps_one_pull_open_on_its_top_queue(env: Env) -> None:
    """Given a user's own node with two free slots and nothing queued, it
    keeps one pull open on the user's normal queue (a job that comes alone
    is delivered without the doorbell and the pull it prompts); once the
    user has a high queue, on that one instead, since a pull open on normal
    could pass a waiting high job (bus/intake.py). The shared-pool node
    keeps none open: one owner's share would skip the ring."""
    user = "open-pull"
    key = env.gw.create_key(user)
    url = env.gw.nats_url
    env.procs.append(start_node(env.gw, "cpu", key=key, name="open", **{**NODE, "node_concurrency": 2}))
    normal = names.consumer_name(user, names.Lane.CPU)
    high = names.LaneQueue(user, names.Lane.CPU, names.Priority.HIGH).consumer
    wait_until(lambda: waiting_pulls(url, normal) == 1, timeout_s=30, what="a pull open on the normal queue")
    with env.gw.client(key) as c:
        [job_id] = submit_noops(c, 1)
        assert wait_job(c, job_id, timeout_s=60)["status"] == "succeeded"
        [high_id] = submit_noops(c, 1, priority="high")
        assert wait_job(c, high_id, timeout_s=60)["status"] == "succeeded"
    wait_until(
        lambda: waiting_pulls(url, high) == 1 and waiting_pulls(url, normal) == 0,
        timeout_s=30,
        what="the open pull moved to the high queue",
    )
    assert waiting_pulls(url, names.consumer_name(names.SHARED, names.Lane.CPU)) == 0
