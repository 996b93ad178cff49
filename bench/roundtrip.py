"""Benchmark 1: one no-op job's round trip, gpubus against raw nats-py and
Celery 5 + Redis, side by side in one run.

- raw: publish to a work-queue stream (PubAck) -> a worker process pulls,
  acks and replies on core NATS -> the client has the reply.
- gpubus bus-only: `JobPublisher.publish` -> a real `gpubus cpu-node` process
  pulls, reports `started`, runs the `noop` processor, stores the result
  object, reports `succeeded`, acks -> the client sees the `succeeded` event.
  (The job record is created before the clock starts: the materializer needs
  it, but it is the gateway's step, not the bus path.)
- gpubus HTTP: `POST /api/v1/jobs {"kind": "noop"}` -> gateway -> bus -> node
  -> materializer -> `GET /api/v1/jobs/{id}/result` answers 200 (polled).
- Celery: `noop.delay(id).get()` with acks_late, a prefork worker (the
  default 2 processes here) and Redis as broker and result backend.

    python -m bench.roundtrip [--seq 300] [--pipe 2000] [--inflight 64]
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from bench import common, raw_worker
from bench.busclient import BusClient
from bench.loops import Waiters, pipelined, sequential
from bench.redis_server import redis_server

PAYLOAD_PAD = b"x" * 256  # about the size of a JobMessage
POLL_FIRST_S = 0.001
POLL_MAX_S = 0.02


# -- raw nats-py ---------------------------------------------------------------


async def bench_raw(url: str, root: Path, args) -> tuple[list[float], float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=raw_worker.STREAM, subjects=[raw_worker.SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        )
    )
    await js.add_consumer(
        raw_worker.STREAM,
        ConsumerConfig(durable_name=raw_worker.CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=1000),
    )
    log = (root / "raw-worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.raw_worker", url], cwd=common.REPO, stdout=subprocess.PIPE, stderr=log,
        start_new_session=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"ready", "raw worker did not start"
        waiters = Waiters()
        inbox = nc.new_inbox()

        async def on_reply(msg) -> None:
            waiters.resolve(msg.data[:12].decode())

        await nc.subscribe(inbox, cb=on_reply)

        async def one(i: int) -> None:
            key = f"{i:012d}"[-12:]
            fut = waiters.expect(key)
            await js.publish(raw_worker.SUBJECT, key.encode() + PAYLOAD_PAD, headers={"Reply-To": inbox})
            await asyncio.wait_for(fut, 30)

        seq = await sequential(one, args.seq, warmup=args.warmup)
        rate, _ = await pipelined(one, args.pipe, inflight=args.inflight)
        return seq, rate
    finally:
        worker.terminate()
        worker.wait(10)
        await nc.close()


# -- gpubus --------------------------------------------------------------------


async def bench_bus(url: str, owner: str, args) -> tuple[list[float], float]:
    client = await BusClient.open(url)
    try:
        lat: list[float] = []

        async def one(_: int) -> None:
            lat.append(await client.run_job(owner))

        await sequential(one, args.seq, warmup=args.warmup)
        seq = lat[args.warmup :]  # publish -> succeeded, without the record create
        rate, _ = await pipelined(one, args.pipe, inflight=args.inflight)
        return seq, rate
    finally:
        await client.close()


async def bench_http(gw_url: str, key: str, args) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=args.inflight, max_keepalive_connections=args.inflight)
    async with httpx.AsyncClient(
        base_url=gw_url, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as c:

        async def one(_: int) -> None:
            r = await c.post("/api/v1/jobs", json={"kind": "noop"})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            delay = POLL_FIRST_S
            deadline = time.monotonic() + 30
            while True:
                r = await c.get(f"/api/v1/jobs/{job_id}/result")
                if r.status_code == 200:
                    return
                assert r.status_code == 409 and time.monotonic() < deadline, r.text
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, POLL_MAX_S)

        seq = await sequential(one, args.seq, warmup=args.warmup)
        rate, _ = await pipelined(one, args.pipe, inflight=args.inflight)
        return seq, rate


# -- Celery + Redis --------------------------------------------------------------


def bench_celery(root: Path, args) -> tuple[list[float], float]:
    with redis_server(root / "redis") as redis_url:
        env = {**os.environ, "BENCH_REDIS_URL": redis_url}
        os.environ["BENCH_REDIS_URL"] = redis_url
        log = (root / "celery-worker.log").open("ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--loglevel", "WARNING",
             "--concurrency", str(args.celery_concurrency), "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            from bench.celery_app import app, noop

            app.conf.broker_url = app.conf.result_backend = redis_url
            noop.delay("warm").get(timeout=60)
            for i in range(args.warmup):
                noop.delay(f"w{i}").get(timeout=30)
            seq = []
            for i in range(args.seq):
                t0 = time.perf_counter()
                noop.delay(str(i)).get(timeout=30)
                seq.append(time.perf_counter() - t0)
            window: collections.deque = collections.deque()
            t0 = time.perf_counter()
            for i in range(args.pipe):
                if len(window) >= args.inflight:
                    window.popleft().get(timeout=30)
                window.append(noop.delay(str(i)))
            while window:
                window.popleft().get(timeout=30)
            rate = args.pipe / (time.perf_counter() - t0)
            return seq, rate
        finally:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)


# -- the run -------------------------------------------------------------------


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=300, help="sequential jobs per system")
    p.add_argument("--pipe", type=int, default=2000, help="pipelined jobs per system")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--node-concurrency", type=int, default=64, help="GPUBUS_NODE_CONCURRENCY of the gpubus node")
    p.add_argument("--celery-concurrency", type=int, default=os.cpu_count() or 2, help="prefork processes")
    p.add_argument("--skip-celery", action="store_true")
    args = p.parse_args()
    rep = common.Report("roundtrip")
    print(f"roundtrip: {args.seq} sequential + {args.pipe} pipelined ({args.inflight} in flight) per system", flush=True)
    with common.workdir(args.workdir) as root, common.nats_server(root) as server:
        raw_seq, raw_rate = asyncio.run(bench_raw(server.url, root, args))
        rep.row("raw nats-py", **common.latency_summary(raw_seq), jobs_per_s=raw_rate)
        with common.gateway(server, root) as gw:
            owner = "bench"
            key = gw.create_key(owner)
            with common.nodes(gw, 1, key=key, node_concurrency=args.node_concurrency):
                bus_seq, bus_rate = asyncio.run(bench_bus(server.url, owner, args))
                rep.row("gpubus bus-only", **common.latency_summary(bus_seq), jobs_per_s=bus_rate)
                http_seq, http_rate = asyncio.run(bench_http(gw.url, key, args))
                rep.row("gpubus HTTP", **common.latency_summary(http_seq), jobs_per_s=http_rate)
        if not args.skip_celery:
            cel_seq, cel_rate = bench_celery(root, args)
            rep.row("celery+redis (acks_late)", **common.latency_summary(cel_seq), jobs_per_s=cel_rate)
    raw_p50 = common.percentile(raw_seq, 50)
    bus_r = common.percentile(bus_seq, 50) / raw_p50
    http_r = common.percentile(http_seq, 50) / raw_p50
    rep.ratio("bus-only p50 / raw p50", bus_r, target="<= 3", ok=bus_r <= 3)
    rep.ratio("HTTP p50 / raw p50", http_r, target="<= 6", ok=http_r <= 6)
    if not args.skip_celery:
        pipe_r = bus_rate / cel_rate
        rep.ratio("bus-only pipelined jobs/s / celery+redis", pipe_r, target=">= 3", ok=pipe_r >= 3)
        rep.ratio("HTTP pipelined jobs/s / celery+redis", http_rate / cel_rate, target="(reported)", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
