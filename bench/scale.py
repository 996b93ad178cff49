"""Benchmark 5: the scale curve of the per-owner design.

jobs/s and p99 latency of no-op jobs (bus-only: publisher -> node runtime ->
result stored -> `succeeded` event) with 1, 2, 4 node processes and 1, 10,
100 owners. Every owner has its own durable consumer; each node process runs
one real `NodeRuntime` per owner (bench/node_pool.py), so 100 owners x 4
nodes is 400 pull loops on 100 consumers. Jobs are spread round-robin over the
owners with a fixed number in flight. The ratios printed last compare 100
owners with 1 owner at each node count: a design that collapsed as owners
grow would show up there.

    python -m bench.scale [--jobs 1000] [--nodes 1,2,4] [--owners 1,10,100]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats

from bench import common
from bench.busclient import BusClient
from bench.loops import pipelined
from bus import topology
from bus.sealing import RecordSeal
from bus.settings import Settings
from testkit.harness import ADMIN_TOKEN


async def prepare(url: str, owners: list[str]) -> None:
    """Streams, buckets and each owner's consumers and file bucket, as the
    gateway makes them."""
    s = Settings(nats_url=url)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await topology.ensure_core(js, s)
        for owner in owners:
            await topology.ensure_owner(js, s, owner)
    finally:
        await nc.close()


def start_pools(url: str, owners: list[str], count: int, capacity: int, root: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(count):
        log = (root / f"pool{i}.log").open("ab")
        p = subprocess.Popen(
            [sys.executable, "-m", "bench.node_pool", url, ",".join(owners), str(capacity)],
            cwd=common.REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        procs.append(p)
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready", "node pool did not start"
    return procs


def stop_pools(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        common.stop_proc(p, 20)


async def drive(url: str, owners: list[str], jobs: int, inflight: int) -> tuple[float, float]:
    client = await BusClient.open(url, RecordSeal.from_secret(ADMIN_TOKEN))
    try:
        lat: list[float] = []

        async def one(i: int) -> None:
            lat.append(await client.run_job(owners[i % len(owners)]))

        await pipelined(one, min(jobs, 50), inflight=inflight)  # warm every pull loop
        lat.clear()
        rate, _ = await pipelined(one, jobs, inflight=inflight)
        return rate, common.percentile(lat, 99)
    finally:
        await client.close()


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000, help="jobs per cell")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--nodes", default="1,2,4")
    p.add_argument("--owners", default="1,10,100")
    p.add_argument(
        "--capacity",
        type=int,
        default=64,
        help="capacity of each owner's runtime in a node (64: the in-flight count bounds every cell alike)",
    )
    args = p.parse_args()
    node_counts = [int(x) for x in args.nodes.split(",")]
    owner_counts = [int(x) for x in args.owners.split(",")]
    rep = common.Report("scale")
    cells: dict[tuple[int, int], tuple[float, float]] = {}
    print(f"scale: {args.jobs} jobs per cell, {args.inflight} in flight", flush=True)
    with common.workdir(args.workdir) as root:
        for n_owners in owner_counts:
            owners = [f"o{i}" for i in range(n_owners)]
            with common.nats_server(root, name=f"o{n_owners}", sync=args.nats_sync) as server:
                asyncio.run(prepare(server.url, owners))
                for n_nodes in node_counts:
                    pools = start_pools(server.url, owners, n_nodes, args.capacity, root)
                    try:
                        rate, p99 = asyncio.run(drive(server.url, owners, args.jobs, args.inflight))
                    finally:
                        stop_pools(pools)
                    cells[n_nodes, n_owners] = rate, p99
                    rep.row(f"{n_nodes} node(s), {n_owners} owner(s)", jobs_per_s=rate, p99_ms=p99 * 1e3)
    lo, hi = min(owner_counts), max(owner_counts)
    for n_nodes in node_counts:
        if lo != hi:
            r = cells[n_nodes, hi][0] / cells[n_nodes, lo][0]
            rep.ratio(
                f"jobs/s {hi} owners / {lo} owner(s), {n_nodes} node(s)",
                r,
                target="(reported; ~1 = no collapse)",
                ok=None,
            )
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
