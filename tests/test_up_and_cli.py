"""`gpubus up` on a fresh data dir, then the CLI against it, as a user would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from bus.connection import connect
from ops.embedded_nats import free_port
from tests.harness import TESTDATA, Proc, wait_until, words

pytestmark = pytest.mark.timeout(180)


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_up_then_submit_with_the_cli(tmp_path):
    # Given `gpubus up` in an empty directory
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    env.update(GPUBUS_DATA_DIR=str(tmp_path / "data"), GPUBUS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    port = free_port()
    up = Proc(["up", "--port", str(port)], env, tmp_path / "up.log").start()
    try:
        up_json = tmp_path / "data" / "up.json"
        wait_until(up_json.exists, timeout_s=90, what="up.json", proc=up)
        info = json.loads(up_json.read_text())
        # Then it printed the gateway URL and a key, and wrote them for scripts
        assert info["gateway_url"] == f"http://127.0.0.1:{port}"
        assert info["api_key"].startswith("gpb_") and "@127.0.0.1:" in info["nats_url"]  # service identity
        assert info["api_key"] in up.log() and info["gateway_url"] in up.log()

        # When the CLI submits speech with --gpu --wait --format srt
        r = cli("submit", str(TESTDATA / "hello.wav"), "--gpu", "--wait", "--format", "srt", env=env)
        # Then it prints the transcript as SRT (no GPU here, so the CPU lane, and it says why)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("1\n00:00:00,000 --> ")
        assert {"weather", "nice", "today"} <= words(r.stdout)
        assert "no_live_gpu_node" in r.stderr

        # And the job shows up in the listing, and a bad file fails with a code
        listing = cli("jobs", "list", env=env)
        assert listing.returncode == 0 and "succeeded" in listing.stdout
        bad = cli("submit", str(TESTDATA / "garbage.bin"), "--wait", env=env)
        assert bad.returncode != 0 and "DECODE_FAILED" in bad.stderr
    finally:
        # When it gets SIGTERM it shuts down cleanly, NATS included
        up.signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0, up.log()[-2000:]
    assert not (tmp_path / "data" / "up.json").exists()
    nats_port = int(info["nats_url"].rsplit(":", 1)[1])
    with pytest.raises(OSError):  # the embedded nats-server is gone too
        socket.create_connection(("127.0.0.1", nats_port), timeout=1).close()


def test_up_cluster_3_runs_a_replicated_cluster(tmp_path):
    # Given `gpubus up --cluster 3`
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    env.update(GPUBUS_DATA_DIR=str(tmp_path / "data"), GPUBUS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    up = Proc(["up", "--port", str(free_port()), "--cluster", "3"], env, tmp_path / "up.log").start()
    try:
        up_json = tmp_path / "data" / "up.json"
        wait_until(up_json.exists, timeout_s=90, what="up.json", proc=up)
        info = json.loads(up_json.read_text())
        # Then scripts get all three servers, and the JOBS stream has three replicas
        urls = info["nats_url"].split(",")
        assert len(urls) == 3 and len(set(urls)) == 3, urls
        assert _stream_replicas(urls, "JOBS") == 3
        # And a job goes through it
        r = cli("submit", str(TESTDATA / "hello.wav"), "--wait", "--format", "text", env=env)
        assert r.returncode == 0 and "weather" in r.stdout.lower(), r.stderr
    finally:
        up.signal(signal.SIGTERM)
        assert up.proc.wait(60) == 0, up.log()[-2000:]
    for url in urls:  # every embedded server is gone
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=1).close()


def _stream_replicas(urls: list[str], stream: str) -> int:
    async def replicas() -> int:
        nc = await connect(urls, name="up-cluster-test")
        try:
            return (await nc.jetstream().stream_info(stream)).config.num_replicas
        finally:
            await nc.close()

    return asyncio.run(replicas())
