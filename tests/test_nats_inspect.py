"""The operators' view of a running `gpubus up`: its NATS monitoring port
answers /varz, /jsz and /connz on loopback, and every `nats …` command the
README's "Inspecting with the nats CLI" section shows is asked here with
nats-py and answers what the README says it does. A command added to that
section fails this test until it is taught here, so the section stays true."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import RetentionPolicy

from bus.settings import Settings
from ops.embedded_nats import free_port
from tests.harness import TESTDATA, Proc, wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
README_USER = "alice"  # the README's example user; `gpubus up` serves "local"
IDEMPOTENCY_KEY = "readme-demo"  # the CPU job's, so `nats kv get idempotency …` has an entry
JOB_FIELDS = {"status", "lane", "routed_reason", "node_id", "attempts", "created_at", "started_at", "finished_at"}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Inspecting with the nats CLI") :]
    end = section.find("\n## ", 3)
    section = section if end < 0 else section[:end]
    return [" ".join(c.split()) for c in re.findall(r"`(nats [^`]+)`", section)]


def monitor(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}{path}", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """`gpubus up`, a GPU node of its user (--device cpu: no GPU here) and one
    finished GPU job, as an operator would find them."""
    tmp = tmp_path_factory.mktemp("inspect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUBUS_")}
    env.update(GPUBUS_DATA_DIR=str(tmp / "data"), GPUBUS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    up = Proc(["up", "--port", str(free_port())], env, tmp / "up.log").start()
    gpu = None
    try:
        up_json = tmp / "data" / "up.json"
        wait_until(up_json.exists, timeout_s=90, what="up.json", proc=up)
        info = json.loads(up_json.read_text())
        gpu_env = {**env, "GPUBUS_GATEWAY_URL": info["gateway_url"], "GPUBUS_API_KEY": info["api_key"]}
        gpu_env["GPUBUS_INLINE_RESULT_MAX"] = "0"  # its results go to the object store, the CPU node's inline
        gpu = Proc(["gpu-node", "--device", "cpu"], gpu_env, tmp / "gpu.log").start()
        client = httpx.Client(base_url=info["gateway_url"], headers={"Authorization": f"Bearer {info['api_key']}"})

        def gpu_live() -> bool:
            nodes = client.get("/api/v1/status/workers").json()["nodes"]
            return any(n["lane"] == "gpu" and n["owner"] == info["user_id"] for n in nodes)

        wait_until(gpu_live, timeout_s=60, what="GPU node live", proc=gpu)
        jobs = {}
        for gpu_flag in ("true", "false"):
            with (TESTDATA / "hello.wav").open("rb") as f:
                job = client.post(
                    "/api/v1/jobs",
                    files={"file": ("hello.wav", f)},
                    data={"gpu": gpu_flag},
                    headers={"Idempotency-Key": IDEMPOTENCY_KEY} if gpu_flag == "false" else {},
                ).json()
            jobs[job["lane"]] = job["job_id"]
        assert set(jobs) == {"gpu", "cpu"}, jobs

        def done() -> bool:
            recs = [client.get(f"/api/v1/jobs/{j}").json() for j in jobs.values()]
            return all(r["status"] in ("succeeded", "failed") for r in recs)

        wait_until(done, timeout_s=90, what="jobs finished", interval_s=0.2)
        yield info, jobs, up
    finally:
        for proc in (gpu, up):
            if proc is not None:
                proc.signal(signal.SIGTERM)
                proc.proc.wait(60)


def test_up_prints_and_writes_a_loopback_monitoring_port_that_answers(stack):
    info, _, up = stack
    # Given the monitoring URL `gpubus up` wrote and printed
    url = info["nats_monitor_url"]
    assert url.startswith("http://127.0.0.1:") and f"monitor: {url}" in up.log()
    # Then /varz names the server with JetStream on
    varz = monitor(url, "/varz")
    assert varz["server_name"] and varz["jetstream"]["config"]["store_dir"]
    # and /jsz lists the streams and the user's lane consumers, the GPU one having delivered the job
    jsz = monitor(url, "/jsz?streams=true&consumers=true")
    streams = {s["name"]: s for a in jsz["account_details"] for s in a.get("stream_detail", [])}
    assert {"JOBS", "EVENTS", "STARTS"} <= set(streams)
    gpu_consumer = next(c for c in streams["JOBS"]["consumer_detail"] if c["name"] == f"gpu_{info['user_id']}")
    assert gpu_consumer["delivered"]["stream_seq"] >= 1
    # and /connz has the gateway side's and the nodes' connections
    assert monitor(url, "/connz")["num_connections"] >= 3


async def test_every_nats_command_in_the_readme_answers_as_it_says(stack):
    info, jobs, _ = stack
    # Given the commands of the README section (the user alice there is `up`'s "local"), and a
    # finished GPU job whose result is an object, and a CPU job's that rides in its event
    commands = readme_commands()
    assert "nats stream info JOBS" in commands and "nats consumer info JOBS gpu_alice" in commands
    # When each is asked with nats-py, as the service identity up.json holds
    nc = await nats.connect(info["nats_url"].split(","), connect_timeout=5)
    try:
        ask = await Asker.start(nc.jetstream(), info["user_id"], jobs)
        for cmd in commands:
            # Then each answers what the README says it shows
            await ask(cmd)
    finally:
        await nc.close()


class Asker:
    """Each `nats` command of the README, asked with nats-py."""

    def __init__(self, js: Any, owner: str, rec: dict[str, Any], inline: dict[str, Any]) -> None:
        self.js, self.owner, self.rec, self.inline = js, owner, rec, inline
        self.defaults = Settings()

    @classmethod
    async def start(cls, js: Any, owner: str, jobs: dict[str, str]) -> Asker:
        """With the two jobs' records as the KV holds them (the GPU one, whose
        id fills `<job_id>`, and the CPU one, whose result is inline)."""
        kv = await js.key_value("jobs")
        rec, inline = [json.loads((await kv.get(f"{owner}.{jobs[lane]}")).value) for lane in ("gpu", "cpu")]
        assert rec["status"] == inline["status"] == "succeeded", (rec, inline)
        assert rec.get("result_object") and rec.get("result_event_seq") is None, rec
        assert inline.get("result_event_seq") and inline.get("result_object") is None, inline
        return cls(js, owner, rec, inline)

    def concrete(self, cmd: str) -> list[str]:
        cmd = cmd.replace(README_USER, self.owner).replace("<job_id>", self.rec["job_id"]).replace("<attempt>", "1")
        digest = hashlib.sha256(IDEMPOTENCY_KEY.encode()).hexdigest()
        cmd = cmd.replace("<sha256 of the key>", digest)
        return cmd.replace("<result_event_seq>", str(self.inline["result_event_seq"])).split()[1:]

    async def __call__(self, cmd: str) -> None:
        words = self.concrete(cmd)
        handlers: dict[tuple[str, str], Callable[..., Any]] = {
            ("stream", "info"): self.stream_info,
            ("stream", "get"): self.stream_get,
            ("consumer", "info"): self.consumer_info,
            ("consumer", "ls"): self.consumer_ls,
            ("kv", "get"): self.kv_get,
            ("kv", "ls"): self.kv_ls,
            ("kv", "watch"): self.kv_watch,
            ("object", "ls"): self.object_ls,
            ("object", "get"): self.object_get,
        }
        if words[0] == "sub":  # `nats sub 'queued.alice.>'`: the doorbells JOBS republishes
            await self.sub(words[1].strip("'\""))
            return
        if words[0] == "--server":
            assert "nats_url" in cmd  # the identity up.json holds, which this test connects with
            return
        handler = handlers.get((words[0], words[1]))
        assert handler is not None, f"README shows `{cmd}`: teach tests/test_nats_inspect.py to ask it"
        await handler(*words[2:])

    async def sub(self, subject: str) -> None:
        """Every stored job's headers are republished under `queued.>`
        (fair share's doorbells): the subject is the owner's part of it."""
        republish = (await self.js.stream_info("JOBS")).config.republish
        assert republish is not None and republish.dest == "queued.>" and republish.headers_only, republish
        assert subject == f"queued.{self.owner}.>", subject

    async def stream_info(self, stream: str) -> None:
        si = await self.js.stream_info(stream)
        if stream == "JOBS":
            assert si.config.subjects == ["jobs.>"] and si.config.retention == RetentionPolicy.WORK_QUEUE
            assert si.config.duplicate_window == 120
            assert si.state.messages == 0  # the one job finished, so it left the stream
            lanes = {f"gpu_{self.owner}", f"cpu_{self.owner}", "cpu_shared"}
            assert lanes <= {c.name for c in await self.js.consumers_info("JOBS")}
            assert si.state.consumer_count >= len(lanes)

    async def stream_get(self, stream: str, *args: str) -> None:
        if args[0] == "--last-for":
            msg = await self.js.get_last_msg(stream, args[1])
            assert msg.data == b"node"  # the GPU node took the queued attempt
            return
        msg = await self.js.get_msg(stream, int(args[0]))
        assert self.inline["job_id"] in msg.subject and b"succeeded" in msg.data and b"weather" in msg.data

    async def consumer_info(self, stream: str, name: str) -> None:
        ci = await self.js.consumer_info(stream, name)
        assert ci.config.filter_subject == f"jobs.{self.owner}.gpu.*"  # normal priority; high and low have their own
        assert ci.config.ack_wait == self.defaults.gpu_ack_wait
        assert ci.config.max_deliver == self.defaults.gpu_max_deliver
        assert (ci.num_pending, ci.num_ack_pending, ci.num_redelivered) == (0, 0, 0)
        assert ci.ack_floor.stream_seq >= 1 and ci.num_waiting is not None

    async def consumer_ls(self, stream: str) -> None:
        assert f"gpu_{self.owner}" in {c.name for c in await self.js.consumers_info(stream)}

    async def kv_get(self, bucket: str, key: str) -> None:
        entry = await (await self.js.key_value(bucket)).get(key)
        record = json.loads(entry.value)  # JSON, as the README says
        if bucket == "idempotency":  # which job the key made, and the request's fingerprint
            assert {"job_id", "fingerprint", "at"} <= set(record), record
            return
        assert JOB_FIELDS <= set(record) and record["status"] == "succeeded" and record["lane"] == "gpu"
        assert record["summary"]["model"]

    async def kv_ls(self, bucket: str) -> None:
        keys = await (await self.js.key_value(bucket)).keys()
        assert f"{self.owner}.{self.rec['job_id']}" in keys

    async def kv_watch(self, bucket: str) -> None:
        keys = await (await self.js.key_value(bucket)).keys()
        assert any(re.fullmatch(rf"{self.owner}\.gpu\.[\w.-]+", k) for k in keys), keys

    async def object_ls(self, bucket: str) -> None:
        store = await self.js.object_store(bucket)
        infos = {i.name: i for i in await store.list()}
        upload = infos[f"in/{self.rec['job_id']}/hello.wav"]
        assert upload.size == (TESTDATA / "hello.wav").stat().st_size and upload.digest.startswith("SHA-256=")
        assert f"out/{self.rec['job_id']}/1.json" in infos

    async def object_get(self, bucket: str, name: str) -> None:
        result = await (await self.js.object_store(bucket)).get(name)
        assert json.loads(result.data)["text"].strip()
