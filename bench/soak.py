"""Benchmark: a long run of HTTP no-op jobs, and whether anything grows.

`--jobs` jobs through the gateway and one node, `--inflight` at a time, in
`--blocks` equal blocks; after each block the resident memory of the
gateway, the node and nats-server, and the block's jobs/s. A job queue
that serves for weeks must hold its memory flat once its caches are full
and keep its rate: the ratios compare the last half of the run with the
first half, in the same run. nats-server's memory grows with what it
stores (every job's record and events, kept for their retention), so it is
printed, not judged.

    python -m bench.soak [--jobs 60000] [--blocks 12] [--inflight 32]
"""

from __future__ import annotations

import asyncio
import contextlib

import psutil

from bench import common
from bench.loops import pipelined
from bench.roundtrip import Http

JUDGED = ("gateway", "node")


def _rss_mb(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {name: p.memory_info().rss / 2**20 for name, p in procs.items()}


async def drive(gw_url: str, key: str, pids: dict[str, int], args, rep: common.Report) -> list[dict[str, float]]:
    """One row per block: jobs done so far, the block's jobs/s, each process's RSS."""
    http = Http(gw_url, key, args.inflight)
    await http.open()
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    per_block = max(1, args.jobs // args.blocks)
    rows: list[dict[str, float]] = []
    try:
        await pipelined(http.one, args.warmup, inflight=args.inflight)
        for b in range(1, args.blocks + 1):
            rate, _ = await pipelined(http.one, per_block, inflight=args.inflight)
            row = {"jobs": float(b * per_block), "jobs_per_s": rate, **_rss_mb(procs)}
            rows.append(row)
            rep.row(f"after {b * per_block} jobs", **{k: v for k, v in row.items() if k != "jobs"})
    finally:
        await http.close()
    return rows


def growth_mb_per_10k(rows: list[dict[str, float]], name: str) -> float:
    """RSS growth of `name` per 10,000 jobs across the last half of the blocks."""
    half = rows[len(rows) // 2 - 1] if len(rows) > 1 else rows[0]
    last = rows[-1]
    jobs = last["jobs"] - half["jobs"]
    return (last[name] - half[name]) / jobs * 10_000 if jobs else 0.0


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=60_000)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--inflight", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--node-concurrency", type=int, default=8)
    args = p.parse_args()
    if args.blocks < 2:
        p.error("--blocks: at least 2 (the last half is compared with the first)")
    rep = common.Report("soak")
    print(f"soak: {args.jobs} HTTP no-op jobs, {args.inflight} in flight, {args.blocks} blocks", flush=True)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync))
        gw = stack.enter_context(common.gateway(server, root))
        key = gw.create_key("bench")
        (node,) = stack.enter_context(common.nodes(gw, 1, key=key, node_concurrency=args.node_concurrency))
        pids = {"gateway": gw.proc.pid, "node": node.pid, "nats-server": server.proc.pid}
        rows = asyncio.run(drive(gw.url, key, pids, args, rep))
    for name in JUDGED:
        g = growth_mb_per_10k(rows, name)
        rep.ratio(f"{name} RSS growth over the last half, MB per 10,000 jobs", g, target="< 1", ok=g < 1)
    rep.ratio(
        "nats-server RSS growth over the last half, MB per 10,000 jobs",
        growth_mb_per_10k(rows, "nats-server"),
        target="(reported: what it stores)",
        ok=None,
    )
    half = len(rows) // 2
    first = sum(r["jobs_per_s"] for r in rows[:half]) / max(1, half)
    second = sum(r["jobs_per_s"] for r in rows[half:]) / max(1, len(rows) - half)
    rep.ratio("jobs/s, last half / first half", second / first, target=">= 0.9", ok=second / first >= 0.9)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
