"""Live progress: `GET /api/v1/jobs/{id}/events` (SSE) and `gpubus submit --wait`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ops.client import GatewayClient
from ops.sse import SseEvent, parse
from tests.harness import TESTDATA, base_env, submit_file, wait_job
from tests.media_files import wav_of_seconds
from tests.test_formats import check_srt_syntax

pytestmark = pytest.mark.timeout(180)


def test_sse_parser_reads_events_and_skips_pings():
    lines = [
        "event: state",
        'data: {"status": "queued"}',
        "",
        ": ping",
        "",
        "event: progress",
        'data: {"progress": 0.5}',
        "",
    ]
    assert list(parse(lines)) == [SseEvent("state", {"status": "queued"}), SseEvent("progress", {"progress": 0.5})]


def test_events_stream_progress_until_the_terminal_state(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "long.wav")
        with c.stream("GET", f"/api/v1/jobs/{job['job_id']}/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = list(parse(r.iter_lines()))
        # The stream opens with the record, then the node's events, and closes on the terminal record
        kinds = [e.event for e in events]
        assert kinds[0] == "state" and events[0].data["job_id"] == job["job_id"]
        assert "started" in kinds and "succeeded" in kinds, kinds
        assert kinds[-1] == "state" and events[-1].data["status"] == "succeeded"
        fractions = [e.data["progress"] for e in events if e.event == "progress" and "progress" in e.data]
        assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] > 0.5, kinds
        assert all(e.data["media_s_done"] <= 77 for e in events if e.event == "progress")
        assert kinds.index("started") < kinds.index("succeeded")
        # Each finished segment's text as it was made: in order, before the outcome, adding up to the result
        segments = [e.data["segment"] for e in events if e.event == "segment"]
        assert len(segments) >= 2 and [s["index"] for s in segments] == list(range(len(segments)))
        assert kinds.index("segment") < max(i for i, k in enumerate(kinds) if k == "progress")
        assert max(i for i, k in enumerate(kinds) if k == "segment") < kinds.index("succeeded")
        # When the stream ends the result is there
        result = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=json").json()
        assert "".join(s["text"] for s in segments).strip() == result["text"]
        assert [(s["start"], s["end"]) for s in segments] == [(s["start"], s["end"]) for s in result["segments"]]


def test_events_of_a_finished_job_replay_the_final_state_and_end(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav")
        wait_job(c, job["job_id"])
    events = list(GatewayClient(gateway.url, key).events(job["job_id"]))
    assert [e.event for e in events] == ["state"] and events[0].data["status"] == "succeeded"


def test_events_of_another_users_job_are_404(gateway, shared_cpu_node, user):
    key_a, key_b = gateway.create_key(user), gateway.create_key(user + "-b")
    with gateway.client(key_a) as a, gateway.client(key_b) as b:
        job = submit_file(a, TESTDATA / "hello.wav")
        r = b.get(f"/api/v1/jobs/{job['job_id']}/events")
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
        wait_job(a, job["job_id"])


def test_cli_submit_wait_follows_the_events_and_prints_the_result(gateway, shared_cpu_node, user, tmp_path):
    key = gateway.create_key(user)
    env = base_env(gateway.nats_url, gateway_url=gateway.url, api_key=key, data_dir=tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "submit", str(TESTDATA / "numbers.wav"), "--wait", "--format", "srt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stderr
    assert check_srt_syntax(out.stdout) >= 1 and "report" in out.stdout.lower()
    assert "polling" not in out.stderr and "queued on cpu" in out.stderr


def test_client_wait_without_events_long_polls_to_the_end(gateway, shared_cpu_node, user, tmp_path):
    # Given a job of 160 s of speech (seconds of work), and a client that cannot use the event stream
    key = gateway.create_key(user)
    client = GatewayClient(gateway.url, key)
    talk = wav_of_seconds(TESTDATA / "long.wav", 160, tmp_path / "talk.wav")
    with gateway.client(key) as c:
        ahead = submit_file(c, talk)  # the shared node takes one job at a time: ours waits behind it
        job = submit_file(c, talk)
    seen: list[str] = []
    # When it waits by long polls
    final = client.wait(job["job_id"], timeout_s=120, on_update=lambda j: seen.append(j["status"]))
    # Then it saw the job along the way (about once a second) and got its end
    assert final["status"] == "succeeded" and seen[-1] == "succeeded"
    assert len(seen) >= 2 and set(seen[:-1]) <= {"queued", "running"}, seen
    assert client.job(ahead["job_id"])["status"] == "succeeded"


def test_many_sse_clients_share_the_gateway_s_subscriptions_and_make_no_consumers(gateway, shared_cpu_node, user):
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import nats

    from schemas import names
    from tests.harness import ADMIN_TOKEN

    async def consumers() -> int:
        nc = await nats.connect(gateway.nats_url, token=ADMIN_TOKEN)
        try:
            js = nc.jetstream()
            streams = (names.EVENTS_STREAM, names.kv_stream(names.JOBS_BUCKET))
            return sum([(await js.stream_info(s)).state.consumer_count for s in streams])
        finally:
            await nc.close()

    # Given a job, and 16 clients following it (under the per-user cap of 20)
    key = gateway.create_key(user)
    before = asyncio.run(consumers())
    connected = threading.Barrier(17, timeout=60)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "long.wav")

    def follow(i: int) -> list[str]:
        with gateway.client(key) as c, c.stream("GET", f"/api/v1/jobs/{job['job_id']}/events") as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            first = next(parse(lines))
            connected.wait()
            return [first.event] + [e.event for e in parse(lines)]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(follow, i) for i in range(16)]
        connected.wait()
        during = asyncio.run(consumers())
        seen = [f.result(timeout=170) for f in futures]
    # Then no client cost a JetStream consumer, and each saw the whole story once
    assert during == before, (before, during)
    for kinds in seen:
        assert kinds[0] == "state" and kinds[-1] == "state", kinds
        assert kinds.count("started") == 1 and kinds.count("succeeded") == 1, kinds
