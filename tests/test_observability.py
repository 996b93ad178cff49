"""Observability through real processes: a gateway, a user's GPU node (on the
CPU: no GPU here) and a shared CPU node, on a nats-server of this module's
own (so whether the shared pool has a node is up to the test).

Checked: /metrics values move with real jobs, pending and lag rise while no
node serves a queue, every metric a dashboard panel or alert rule uses is
exported, state changes are JSON log lines, and `gpubus status` shows it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.embedded_nats import NatsServer
from tests import document_files, promql
from tests.harness import (
    TESTDATA,
    Gateway,
    Proc,
    ctrl_c_at_default,
    metrics_page,
    start_node,
    stop_all,
    submit_file,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)

LAG_POLL_S = 0.5
REPO = Path(__file__).resolve().parents[1]
# Families that stay empty in this suite, and why; every other one must have samples.
EMPTY_HERE = {
    "gpubus_node_gpu_memory_used_bytes": "no GPU on this machine",
    "gpubus_node_gpu_memory_total_bytes": "no GPU on this machine",
    "gpubus_node_gpu_utilization_ratio": "no GPU on this machine",
    "gpubus_fallbacks_total": "no fallback happens in these tests",
    "gpubus_jobs_fallback_total": "no fallback happens in these tests (the deprecated alias)",
    "gpubus_late_completions_total": "no late completion happens in these tests",
    "gpubus_jobs_expired_total": "no job here has a TTL (tests/test_job_ttl.py)",
    "gpubus_gpu_jobs_overdue": "only while a move off the GPU lane keeps failing",
}


class Scrape:
    """One /metrics page, with lookups by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def get(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def has(self, name: str, **labels: str) -> bool:
        return any(s.name == name and labels.items() <= s.labels.items() for s in self.samples)


def scrape(url: str) -> Scrape:
    return Scrape(metrics_page(url))


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def node_of(gw: Gateway, owner: str, lane: str) -> dict[str, Any]:
    [n] = [n for n in gw.live_nodes() if n["owner"] == owner and n["lane"] == lane]
    return n


@dataclass
class Env:
    gw: Gateway
    nats: NatsServer
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("obs")
    server = NatsServer(store_dir=workdir / "nats").start()
    gw = Gateway(server.url, workdir, settings={"lag_poll_interval": LAG_POLL_S, "max_upload_mb": 8}).start()
    e = Env(gw, server)
    yield e
    stop_all([*e.procs, gw.proc], timeout_s=5)  # teardown only: a slow drain is not what this module tests
    server.stop()


@dataclass
class GpuRun:
    """What one user's GPU node did with a good and a bad file."""

    user: str
    key: str
    node: Proc
    node_info: dict[str, Any]
    good: dict[str, Any]
    bad: dict[str, Any]
    ocr: dict[str, Any]
    png: Path
    node_before: Scrape
    node_after: Scrape
    gw_before: Scrape
    gw_after: Scrape


@pytest.fixture(scope="module")
def gpu_run(env: Env) -> GpuRun:
    # Given a user with a GPU node
    user = "obs-gpu"
    key = env.gw.create_key(user)
    node = start_node(env.gw, "gpu", key=key, name="obs-gpu-node")
    env.procs.append(node)
    info = node_of(env.gw, user, "gpu")
    node_before, gw_before = scrape(info["metrics_url"]), scrape(f"{env.gw.url}/metrics")
    # When they transcribe speech (diarized), send a file that is not media, and an image to read
    png = document_files.text_png(env.gw.workdir / "obs-note.png")
    with env.gw.client(key) as c:
        good = wait_job(c, submit_file(c, TESTDATA / "hello.wav", gpu=True, options='{"diarize": true}')["job_id"])
        bad = wait_job(c, submit_file(c, TESTDATA / "garbage.bin", gpu=True)["job_id"])
        ocr = wait_job(c, submit_file(c, png, gpu=True)["job_id"], timeout_s=90)
    assert good["status"] == "succeeded" and good["lane"] == "gpu", good
    assert bad["status"] == "failed" and bad["lane"] == "gpu", bad
    assert ocr["status"] == "succeeded" and ocr["lane"] == "gpu", ocr
    # (the lag monitor's next poll sees the queue empty again)
    time.sleep(3 * LAG_POLL_S)
    return GpuRun(
        user,
        key,
        node,
        info,
        good,
        bad,
        ocr,
        png,
        node_before,
        scrape(info["metrics_url"]),
        gw_before,
        scrape(f"{env.gw.url}/metrics"),
    )


def test_node_metrics_move_with_real_jobs(gpu_run: GpuRun):
    before, after = gpu_run.node_before, gpu_run.node_after
    node = {"node": gpu_run.node_info["node_id"], "device": "cpu"}

    def delta(name, **labels):
        return after.get(name, **node, **labels) - before.get(name, **node, **labels)

    # Then media seconds rose by the audio's duration (the failed file adds none)
    assert delta("gpubus_node_media_seconds_total") == pytest.approx(wav_seconds(TESTDATA / "hello.wav"), abs=0.1)
    assert delta("gpubus_node_media_seconds_total") == pytest.approx(gpu_run.good["summary"]["duration_s"], abs=1e-6)
    assert delta("gpubus_node_jobs_total", kind="audio", status="succeeded") == 1
    assert delta("gpubus_node_jobs_total", kind="audio", status="failed") == 1
    assert delta("gpubus_node_jobs_total", kind="image", status="succeeded") == 1
    assert delta("gpubus_node_job_duration_seconds_count", kind="image", status="succeeded") == 1
    # and the image's one page counts towards images/s
    assert delta("gpubus_node_pages_total", kind="image") == 1
    assert delta("gpubus_node_processing_seconds_total") > 0
    assert delta("gpubus_node_real_time_factor_count") == 1
    # and the diarization step's own seconds per media second, by engine
    (stage,) = gpu_run.good["summary"]["stages"]
    diarization = {"stage": "diarization", "engine": stage["engine"]}
    assert delta("gpubus_node_stage_media_seconds_total", **diarization) == pytest.approx(stage["media_s"])
    assert delta("gpubus_node_stage_seconds_total", **diarization) == pytest.approx(stage["processing_s"])
    assert delta("gpubus_node_stage_real_time_factor_count", **diarization) == 1
    assert after.get("gpubus_node_in_flight", **node) == 0
    assert after.get("gpubus_node_capacity", **node) == 1
    assert after.get("gpubus_node_model_load_seconds", **node) > 0
    # and a node without NVML/CUDA says so instead of inventing GPU numbers
    assert after.has("gpubus_node_gpu_devices", **node, source="none")
    assert after.get("gpubus_node_gpu_devices", **node) == 0
    assert not after.has("gpubus_node_gpu_memory_used_bytes")


def test_gateway_metrics_move_with_real_jobs(gpu_run: GpuRun):
    before, after, user = gpu_run.gw_before, gpu_run.gw_after, gpu_run.user

    def delta(name, **labels):
        return after.get(name, **labels) - before.get(name, **labels)

    gpu_audio = {"lane": "gpu", "kind": "audio"}
    assert delta("gpubus_jobs_submitted_total", **gpu_audio) == 2
    assert delta("gpubus_jobs_finished_total", **gpu_audio, status="succeeded", code="") == 1
    code = gpu_run.bad["error"]["code"]
    assert delta("gpubus_jobs_finished_total", **gpu_audio, status="failed", code=code) == 1
    assert delta("gpubus_queue_wait_seconds_count", **gpu_audio) == 2
    assert delta("gpubus_job_duration_seconds_count", **gpu_audio) == 2
    assert delta("gpubus_jobs_submitted_total", lane="gpu", kind="image") == 1
    sizes = sum(p.stat().st_size for p in (TESTDATA / "hello.wav", TESTDATA / "garbage.bin", gpu_run.png))
    assert delta("gpubus_upload_bytes_total") == sizes
    assert delta("gpubus_http_request_duration_seconds_count", method="POST", route="/api/v1/jobs", status="202") == 3
    consumer = {"consumer": f"gpu_{user}", "owner": user, "lane": "gpu"}
    assert after.has("gpubus_consumer_pending_jobs", **consumer)
    for name in ("pending", "ack_pending", "redelivered"):
        assert after.get(f"gpubus_consumer_{name}_jobs", **consumer) == 0
    assert after.get("gpubus_consumer_lag_seconds", **consumer) == 0
    assert after.get("gpubus_live_nodes", owner=user, lane="gpu") == 1
    assert after.get("gpubus_live_nodes", owner=user, lane="cpu") == 0
    assert after.get("gpubus_lag_polls_total", result="ok") > before.get("gpubus_lag_polls_total", result="ok")


def test_pending_and_lag_rise_while_no_node_serves_the_queue(env: Env):
    # Given a user without nodes and a shared pool with no node running
    user = "obs-nonode"
    key = env.gw.create_key(user)
    share = f"cpu-shared_{user}"  # the user's share of the pool, made with their first pool job
    shared = {"consumer": share, "owner": "shared", "lane": "cpu", "priority": "normal"}
    gw_metrics = f"{env.gw.url}/metrics"
    with env.gw.client(key) as c:
        # When they submit speech, it waits on the shared pool
        job = submit_file(c, TESTDATA / "numbers.wav")
        assert (job["lane"], job["routed_reason"]) == ("cpu", "gpu_not_requested")
        first = wait_until(
            lambda: (s := scrape(gw_metrics)).get("gpubus_consumer_pending_jobs", **shared) >= 1 and s,
            timeout_s=15,
            what=f"{share} pending",
        )
        assert first.get("gpubus_live_nodes", owner="shared", lane="cpu") == 0
        lag1 = first.get("gpubus_consumer_lag_seconds", **shared)
        time.sleep(1.5)
        # Then the lag grows with time while nothing takes the job
        later = scrape(gw_metrics)
        assert later.get("gpubus_consumer_pending_jobs", **shared) == 1
        assert later.get("gpubus_consumer_lag_seconds", **shared) >= lag1 + 1.0
        assert later.get("gpubus_waiting_jobs", owner=user, priority="normal") == 1
        assert later.get("gpubus_oldest_wait_seconds", owner=user, priority="normal") >= lag1 + 1.0
        info = c.get("/api/v1/auth/queue-info").json()
        [q] = [q for q in info["consumers"] if q["consumer"] == share]
        assert q["pending"] == 1 and q["lag_s"] >= 1.0 and q["oldest_wait_s"] >= 1.0
        assert (q["job_owner"], q["priority"]) == (user, "normal")
        assert {q["consumer"] for q in info["consumers"]} == {f"gpu_{user}", f"cpu_{user}", share, "cpu_shared"}
        [waiting] = info["waiting"]
        assert (waiting["owner"], waiting["priority"], waiting["waiting"]) == (user, "normal", 1)
        assert waiting["oldest_wait_s"] >= 1.0
        assert info["shared_pool"] == {"waiting": 1, "running": 0, "owners_waiting": 1}
        assert c.get("/api/v1/status/queues").json()["owners"] == [
            {**waiting, "oldest_wait_s": pytest.approx(waiting["oldest_wait_s"], abs=1.0)}
        ]
        # When a shared CPU node starts, it drains the queue
        node = start_node(env.gw, "cpu", shared=True, name="obs-shared-node")
        env.procs.append(node)
        assert wait_job(c, job["job_id"])["status"] == "succeeded"
    drained = wait_until(
        lambda: (
            (s := scrape(gw_metrics)).get("gpubus_consumer_pending_jobs", **shared) == 0
            and s.get("gpubus_consumer_lag_seconds", **shared) == 0
            and s
        ),
        timeout_s=15,
        what=f"{share} drained",
    )
    assert drained.get("gpubus_live_nodes", owner="shared", lane="cpu") == 1
    node_metrics = scrape(node_of(env.gw, "shared", "cpu")["metrics_url"])
    assert node_metrics.get("gpubus_node_media_seconds_total") == pytest.approx(
        wav_seconds(TESTDATA / "numbers.wav"), abs=0.1
    )
    assert not node_metrics.has("gpubus_node_gpu_devices")  # CPU nodes have no GPU telemetry at all


def test_every_dashboard_and_alert_metric_is_exported(env: Env, gpu_run: GpuRun):
    # Given what the gateway and the GPU node export after real jobs
    exported = promql.Exposition().add(scrape(f"{env.gw.url}/metrics").text)
    exported.add(scrape(gpu_run.node_info["metrics_url"]).text)
    exprs = promql.all_exprs()
    assert len(exprs) > 25 and promql.DASHBOARDS
    used = set().union(*(promql.metric_names(e) for e in exprs))
    used |= set().union(*(promql.dashboard_variable_metrics(d) for d in promql.DASHBOARDS))
    # Then every metric in every panel and rule is exported ...
    missing = sorted(n for n in used if not exported.exports(n))
    assert not missing, f"used in PromQL but exported by no process: {missing}"
    # ... with samples, except the few that cannot have any here
    empty = sorted(n for n in used if not exported.has_samples(n) and n not in EMPTY_HERE)
    assert not empty, f"exported but never observed after real jobs: {empty}"
    # ... and every label a selector matches on exists on that metric
    for e in exprs:
        for name, labels in promql.selector_labels(e).items():
            if exported.has_samples(name):
                assert labels <= exported.samples[name], f"{e}: {name} has no label {labels - exported.samples[name]}"


def _job_lines(log: str, job_id: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == "job_state" and rec.get("job_id") == job_id:
                out.append(rec)
    return out


def test_each_state_change_is_one_json_log_line(env: Env, gpu_run: GpuRun):
    job_id, user = gpu_run.good["job_id"], gpu_run.user
    node_id = gpu_run.node_info["node_id"]
    gw_lines = _job_lines(env.gw.proc.log(), job_id)
    node_lines = _job_lines(gpu_run.node.log(), job_id)
    # Then the gateway logged queued, running, succeeded; the node started, succeeded
    assert [r["state"] for r in gw_lines] == ["queued", "running", "succeeded"]
    assert [r["state"] for r in node_lines] == ["started", "succeeded"]
    for r in gw_lines + node_lines:
        assert (r["owner"], r["lane"]) == (user, "gpu") and r["msg"].startswith(f"job {job_id}")
    assert gw_lines[0]["node_id"] is None
    assert all(r["node_id"] == node_id for r in gw_lines[1:] + node_lines)
    assert node_lines[1]["elapsed_s"] > 0
    failed = _job_lines(env.gw.proc.log(), gpu_run.bad["job_id"])
    assert failed[-1]["state"] == "failed"


def test_queue_info_and_status_show_nodes_queues_and_failures(env: Env, gpu_run: GpuRun):
    with env.gw.client(gpu_run.key) as c:
        info = c.get("/api/v1/auth/queue-info").json()
    user = gpu_run.user
    assert info["user_id"] == user and info["as_of"] > 0
    assert info["subjects"]["jobs"] == [f"jobs.{user}.gpu.>", f"jobs.{user}.cpu.>"]
    assert info["subjects"]["files"] == f"files-{user}"
    assert {q["consumer"] for q in info["consumers"]} == {f"gpu_{user}", f"cpu_{user}", "cpu_shared"}
    assert gpu_run.node_info["node_id"] in {n["node_id"] for n in info["live_nodes"]}
    assert all(n["owner"] in (user, "shared") for n in info["live_nodes"])
    [failure] = info["recent_failures"]
    code = gpu_run.bad["error"]["code"]
    assert (failure["job_id"], failure["code"]) == (gpu_run.bad["job_id"], code)
    # When the user runs `gpubus status`
    envvars = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    envvars.update(GPUBUS_GATEWAY_URL=env.gw.url, GPUBUS_API_KEY=gpu_run.key, COLUMNS="250")
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status"],
        check=False,
        env=envvars,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the table shows their node, their consumers and the failure
    assert out.returncode == 0, out.stderr
    for expected in (
        gpu_run.node_info["node_id"],
        f"gpu_{user}",
        "cpu_shared",
        "waiting by priority",
        gpu_run.bad["job_id"],
        code,
    ):
        assert expected in out.stdout, out.stdout
    # and `--watch` keeps refreshing until interrupted
    watch = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "status", "--watch"],
        env=envvars,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_at_default,
    )
    time.sleep(4)
    assert watch.poll() is None, watch.communicate()
    watch.send_signal(signal.SIGINT)
    stdout, stderr = watch.communicate(timeout=30)
    assert watch.returncode == 130, stderr
    assert f"gpu_{user}" in stdout and "recent failures" in stdout, stdout


def test_prometheus_discovers_live_nodes_from_the_gateway(env: Env, gpu_run: GpuRun):
    with env.gw.admin() as a:
        targets = a.get("/api/v1/status/prometheus-targets").json()
    with env.gw.client(gpu_run.key) as c:
        assert c.get("/api/v1/status/prometheus-targets").status_code == 403
    url = httpx.URL(gpu_run.node_info["metrics_url"])
    [mine] = [t for t in targets if t["labels"]["owner"] == gpu_run.user]
    assert mine["targets"] == [f"{url.host}:{url.port}"]
    assert mine["labels"] == {
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
        "owner": gpu_run.user,
        "lane": "gpu",
    }
    assert "gpubus_node_media_seconds_total" in httpx.get(f"http://{mine['targets'][0]}/metrics").text
