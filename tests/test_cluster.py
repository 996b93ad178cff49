"""gpubus on a 3-server JetStream cluster: every asset replicated, and no
accepted job lost when the server leading the JOBS stream is killed -9.

Real nats-server processes (NatsCluster) on loopback ports, a real gateway
and two real shared-pool CPU nodes given all three URLs, real speech.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import topology
from bus.connection import connect
from bus.settings import Settings
from ops.embedded_nats import NatsCluster
from schemas import codec, names
from schemas.events import EventType, JobEvent
from tests.harness import TESTDATA, Gateway, metrics_page, start_node, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPLICAS = 3
SUBMIT_EVERY_S = 0.7
WARMUP_S = 6.0  # jobs flowing before the kill
DOWN_S = 10.0  # how long the killed server stays dead
AFTER_RESTART_S = 4.0  # submissions go on after it is back
# A request sent just before the election ends may still time out: one
# JetStream API timeout (5 s, nats-py's default) + a reconnect (0.5 s).
ELECTION_SLACK_S = 5.5
# Raft elections after a kill -9 take 4-9 s per group (nats-server's election
# timeout) and up to ~17 s for all of them here on a loaded 2-core machine, so
# nodes retry each NATS step of a job for up to 30 s and keep their leases
# (ack_wait 30 s, extended every 10 s) through it.
BUS_RETRY_S = 30
ACK_WAIT_S = 30


@pytest.fixture
def cluster(tmp_path: Path):
    c = NatsCluster(store_dir=tmp_path / "cluster", size=REPLICAS).start()
    yield c
    c.stop()


async def _js_of(cluster: NatsCluster):
    nc = await connect(cluster.urls, name="cluster-test")
    return nc, nc.jetstream()


# -- replicas ---------------------------------------------------------------


async def _assert_replicated(js, owner: str, replicas: int) -> None:
    """Every stream (KV and object store included) and durable consumer has
    `replicas` replicas, each with a leader and its followers."""
    streams = {i.config.name: i for i in await js.streams_info()}
    assert set(streams) == {
        names.JOBS_STREAM,
        names.EVENTS_STREAM,
        names.DEADLETTER_STREAM,
        names.STARTS_STREAM,
        names.TIMERS_STREAM,
        names.WEBHOOKS_STREAM,
        f"KV_{names.JOBS_BUCKET}",
        f"KV_{names.APIKEYS_BUCKET}",
        f"KV_{names.NODES_BUCKET}",
        f"KV_{names.IDEMPOTENCY_BUCKET}",
        f"OBJ_{names.files_bucket(owner)}",
    }
    for name, info in streams.items():
        assert info.config.num_replicas == replicas, name
        assert info.cluster.leader and len(info.cluster.replicas or []) == replicas - 1, name
    # durable consumers too, so their ack state survives a server
    durables = [c for st in streams for c in await js.consumers_info(st) if c.config.durable_name]
    assert {c.name for c in durables} >= {
        names.consumer_name(names.SHARED, names.Lane.CPU),
        names.consumer_name(owner, names.Lane.GPU),
        names.consumer_name(owner, names.Lane.CPU),
        names.MATERIALIZER_CONSUMER,
        names.FALLBACK_CONSUMER,
        names.TTL_CONSUMER,
        names.WEBHOOK_CONSUMER,
    }
    for c in durables:
        assert c.config.num_replicas == replicas and not c.config.mem_storage, c.name
        assert len(c.cluster.replicas or []) == replicas - 1, c.name


async def test_every_stream_bucket_and_durable_consumer_is_replicated(cluster):
    # Given the topology the gateway creates, with GPUBUS_REPLICAS=3
    s = Settings(nats_url=cluster.url, replicas=REPLICAS)
    nc, js = await _js_of(cluster)
    try:
        await topology.ensure_core(js, s)
        await topology.ensure_owner(js, s, "alice")
        # Then everything is replicated 3 times
        await _assert_replicated(js, "alice", REPLICAS)
    finally:
        await nc.close()


async def test_raising_replicas_scales_an_existing_deployment(cluster):
    # Given a deployment that started with one replica (one server's worth)
    nc, js = await _js_of(cluster)
    try:
        await topology.ensure_core(js, Settings(nats_url=cluster.url, replicas=1))
        await topology.ensure_owner(js, Settings(nats_url=cluster.url, replicas=1), "bob")
        # When the gateway restarts with GPUBUS_REPLICAS=3
        s = Settings(nats_url=cluster.url, replicas=REPLICAS)
        await topology.ensure_core(js, s)
        await topology.ensure_owner(js, s, "bob")
        # Then it starts (KV buckets and object stores are updated, not
        # refused) and everything ends up with 3 replicas
        for _ in range(50):  # new peers catch up in the background
            try:
                await _assert_replicated(js, "bob", REPLICAS)
                break
            except AssertionError:
                await asyncio.sleep(0.2)
        await _assert_replicated(js, "bob", REPLICAS)
    finally:
        await nc.close()


# -- killing the leader -----------------------------------------------------


@dataclass
class Answer:
    t0: float
    t1: float
    status: int  # 0 = no HTTP answer at all
    job_id: str | None = None
    error: str = ""
    retry_after: str | None = None


def _submit_steadily(gw: Gateway, key: str, stop: threading.Event, answers: list[Answer]) -> None:
    """One client submitting hello.wav at a steady pace, as a real client
    would; it records every answer and never retries by itself."""
    data = (TESTDATA / "hello.wav").read_bytes()
    with gw.client(key) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = c.post("/api/v1/jobs", files={"file": ("hello.wav", data)}, data={"gpu": "false"})
                job_id = r.json().get("job_id") if r.status_code == 202 else None
                answers.append(
                    Answer(t0, time.monotonic(), r.status_code, job_id, retry_after=r.headers.get("retry-after"))
                )
            except httpx.HTTPError as e:
                answers.append(Answer(t0, time.monotonic(), 0, error=repr(e)))
            stop.wait(max(0.0, SUBMIT_EVERY_S - (time.monotonic() - t0)))


async def _jobs_leader(cluster: NatsCluster) -> str:
    nc, js = await _js_of(cluster)
    try:
        return (await js.stream_info(names.JOBS_STREAM)).cluster.leader
    finally:
        await nc.close()


async def _wait_for_new_leaders(cluster: NatsCluster, dead: str, timeout_s: float = 60) -> float:
    """Seconds until every replicated stream and durable consumer has a
    leader again that is not the dead server: the leader election."""
    t0 = time.monotonic()
    nc, js = await _js_of(cluster)
    try:
        while time.monotonic() - t0 < timeout_s:
            try:
                if await _all_led(js, dead):
                    return time.monotonic() - t0
            except Exception:  # the meta leader may be the one that died: the API is away for a moment
                pass
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    raise AssertionError(f"no new leaders {timeout_s}s after killing {dead}")


async def _all_led(js, dead: str) -> bool:
    for info in await js.streams_info():
        if info.cluster is None or info.cluster.leader in (None, dead):
            return False
        for c in await js.consumers_info(info.config.name):
            if c.config.durable_name and (c.cluster is None or c.cluster.leader in (None, dead)):
                return False
    return True


async def _succeeded_events(cluster: NatsCluster, owner: str) -> Counter:
    """How many `succeeded` events each job got: the times it was run to the end."""
    nc, js = await _js_of(cluster)
    count: Counter = Counter()
    try:
        sub = await js.subscribe(names.event_subject(owner, "*"), ordered_consumer=True)
        info = await js.stream_info(names.EVENTS_STREAM)
        for _ in range(info.state.messages):
            try:
                msg = await sub.next_msg(timeout=5)
            except Exception:
                break
            ev = codec.decode(msg.data, JobEvent)
            if ev.type == EventType.SUCCEEDED:
                count[ev.job_id] += 1
        await sub.unsubscribe()
    finally:
        await nc.close()
    return count


def _failed(a: Answer) -> bool:
    return a.status >= 500 or a.status == 0


def _longest_5xx_run(answers: list[Answer]) -> float:
    """Longest stretch of consecutive answers that were 5xx or no answer."""
    longest, start = 0.0, None
    for a in sorted(answers, key=lambda a: a.t0):
        if _failed(a):
            start = a.t0 if start is None else start
            longest = max(longest, a.t1 - start)
        else:
            start = None
    return longest


def _counter(metrics_url: str, name: str, **labels: str) -> float:
    text = metrics_page(metrics_url)
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == f"{name}_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_killing_the_jobs_stream_leader_loses_no_job(cluster, tmp_path):
    # Given a gateway and two shared CPU nodes on the 3-server cluster, with
    # every client given all three URLs
    gw = Gateway(cluster.url, tmp_path, settings={"replicas": REPLICAS, "cpu_ack_wait": ACK_WAIT_S}).start()
    nodes = [start_node(gw, "cpu", shared=True, name=f"shared-cpu-{i}", publish_timeout=BUS_RETRY_S) for i in range(2)]
    owner = "cluster-user"
    key = gw.create_key(owner, roles=("user",))
    answers: list[Answer] = []
    stop = threading.Event()
    submitter = threading.Thread(target=_submit_steadily, args=(gw, key, stop, answers), daemon=True)
    try:
        # When jobs flow steadily and the JOBS stream leader is killed -9 mid-run
        submitter.start()
        time.sleep(WARMUP_S)
        victim = cluster.server(asyncio.run(_jobs_leader(cluster)))
        t_kill = time.monotonic()
        victim.kill()
        election_s = asyncio.run(_wait_for_new_leaders(cluster, victim.server_name))
        # ... and comes back later with its store, as a crashed machine would
        time.sleep(max(0.0, t_kill + DOWN_S - time.monotonic()))
        victim.start()
        cluster.wait_healthy()
        time.sleep(AFTER_RESTART_S)
        stop.set()
        submitter.join(60)

        statuses = Counter(a.status for a in answers)
        print(
            f"\ncluster fault: killed {victim.server_name}; leaders re-elected in {election_s:.2f}s; "
            f"answers {dict(statuses)}; longest 5xx run {_longest_5xx_run(answers):.2f}s; "
            f"errors {[a.error for a in answers if a.error]}"
        )
        # Then every accepted job reaches `succeeded`
        accepted = [a.job_id for a in answers if a.status == 202]
        assert len(accepted) >= 15, [a.status for a in answers]
        assert any(a.t0 > t_kill + DOWN_S for a in answers if a.status == 202), "no job accepted after the restart"
        with gw.client(key) as c:

            def all_terminal():
                jobs = {j["job_id"]: j for j in c.get("/api/v1/jobs", params={"limit": 1000}).json()["jobs"]}
                done = [jobs.get(j) for j in accepted]
                return done if all(j and j["status"] in ("succeeded", "failed", "cancelled") for j in done) else None

            final = wait_until(all_terminal, timeout_s=120, what="every accepted job terminal", interval_s=0.5)
        assert [j["job_id"] for j in final if j["status"] != "succeeded"] == [], final
        # ... and the gateway still sees both nodes live (its registry watch
        # outlived the server that hosted it)
        wait_until(lambda: len(gw.live_nodes()) == len(nodes), timeout_s=15, what="both nodes live again")
        # ... exactly once: one terminal transition each (counted by the
        # gateway), and a second run only for a job a node held at the kill
        assert _counter(f"{gw.url}/metrics", "gpubus_jobs_finished") == len(accepted)
        runs = asyncio.run(_succeeded_events(cluster, owner))
        assert all(runs[j] >= 1 for j in accepted)
        reruns = {j: n for j, n in runs.items() if n > 1}
        assert len(reruns) <= len(nodes), reruns
        # ... and no node threw work away: every step of every job rode
        # through the election (nothing nak'ed, nothing redone)
        node_outcomes = Counter()
        for n in gw.live_nodes():
            for status in ("succeeded", "failed"):
                node_outcomes[status] += _counter(n["metrics_url"], "gpubus_node_jobs", status=status)
        print(f"{len(accepted)} accepted, all succeeded; run twice: {reruns}; node outcomes {dict(node_outcomes)}")
        assert node_outcomes["failed"] == 0, node_outcomes
        # And the gateway answered 5xx only while leaders were being elected,
        # and then only 503 with Retry-After (nothing accepted, retry)
        assert set(statuses) <= {202, 503}, statuses
        assert all(a.retry_after for a in answers if a.status == 503)
        failed_at = [(round(a.t0 - t_kill, 2), round(a.t1 - t_kill, 2)) for a in answers if _failed(a)]
        # (a request is judged by when it was sent: a leader that was just
        # elected may still be catching up, so one sent right after the
        # election can still run into one JetStream API timeout)
        assert all(0 <= t0 <= election_s + ELECTION_SLACK_S for t0, _ in failed_at), (election_s, failed_at)
    finally:
        stop.set()
        for n in nodes:
            n.stop()
        gw.stop()
