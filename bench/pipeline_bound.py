"""Benchmark: what bounds gpubus's pipelined rate? Each suspect gets more of
itself in alternating turns of one run; a suspect that bounds the rate
raises it when doubled.

On one nats-server, gateway and owner, the bus-only client
(bench/busclient.py: record, `JobPublisher.publish`, the `succeeded` event)
drives `--jobs` no-op jobs with `--inflight` in flight, turn after turn, in
four set-ups (the order flipping every turn):

- `base`: one client connection, one node of `--node-concurrency`;
- `2 nodes`: one client connection, two nodes of half that concurrency
  each, pulling the same consumer (the node's take loop and event loop
  doubled, the slots the same);
- `2 nodes, 2x slots`: two nodes of the full concurrency each;
- `2 clients`: two client connections (half the in-flight jobs each), one
  node (the publishing connection and its process doubled).

The set-ups use two owners (one with one node, one with two), so both kinds
of node are up throughout and the turns only change who submits. Also
printed: the server's stored writes per job in each of its streams.

    python -m bench.pipeline_bound [--jobs 600] [--turns 6] [--inflight 64] [--node-concurrency 8]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import nats

from bench import common
from bench.busclient import BusClient
from bench.loops import pipelined
from bus.sealing import RecordSeal
from schemas import names
from testkit.harness import ADMIN_TOKEN

ONE_NODE, TWO_NODES, TWO_FULL = "one-node", "two-nodes", "two-full"  # the owners
SETUPS = {  # set-up -> (owner, client connections)
    "base": (ONE_NODE, 1),
    "2 nodes": (TWO_NODES, 1),
    "2 nodes, 2x slots": (TWO_FULL, 1),
    "2 clients": (ONE_NODE, 2),
}
STREAMS = (names.JOBS_STREAM, names.EVENTS_STREAM, f"KV_{names.JOBS_BUCKET}")


async def _stored(url: str) -> dict[str, int]:
    """Each stream's last sequence: the writes it has stored so far."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return {s: (await js.stream_info(s)).state.last_seq for s in STREAMS}
    finally:
        await nc.close()


async def _turn(clients: list[BusClient], owner: str, jobs: int, inflight: int) -> float:
    """Jobs per second of `jobs` spread over `clients`, `inflight` in all."""
    t0 = time.perf_counter()
    share, lanes = jobs // len(clients), max(1, inflight // len(clients))
    await asyncio.gather(*(pipelined(lambda _i, c=c: c.run_job(owner), share, inflight=lanes) for c in clients))
    return share * len(clients) / (time.perf_counter() - t0)


async def drive(url: str, args) -> tuple[dict[str, list[float]], dict[str, float]]:
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    clients = [await BusClient.open(url, seal) for _ in range(2)]
    rates: dict[str, list[float]] = {s: [] for s in SETUPS}
    try:
        for owner in (ONE_NODE, TWO_NODES, TWO_FULL):  # warm every path
            await _turn(clients[:1], owner, args.warmup, min(args.warmup, args.inflight))
        before = await _stored(url)
        done = 0
        for t in range(args.turns):
            order = list(SETUPS) if t % 2 == 0 else list(SETUPS)[::-1]
            for setup in order:
                owner, conns = SETUPS[setup]
                rates[setup].append(await _turn(clients[:conns], owner, args.jobs, args.inflight))
                done += (args.jobs // conns) * conns
        after = await _stored(url)
    finally:
        for c in clients:
            await c.close()
    return rates, {s: (after[s] - before[s]) / max(1, done) for s in STREAMS}


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=600, help="pipelined jobs per turn")
    p.add_argument("--turns", type=int, default=6, help="turns per set-up")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--node-concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=50)
    args = p.parse_args()
    rep = common.Report("pipeline_bound")
    print(
        f"pipeline_bound: {args.turns} turns of {args.jobs} jobs per set-up, {args.inflight} in flight, "
        f"node concurrency {args.node_concurrency}",
        flush=True,
    )
    half = max(1, args.node_concurrency // 2)
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync))
        gw = stack.enter_context(common.gateway(server, root))
        fleets = [(ONE_NODE, 1, args.node_concurrency), (TWO_NODES, 2, half), (TWO_FULL, 2, args.node_concurrency)]
        for owner, count, concurrency in fleets:
            key = gw.create_key(owner)
            stack.enter_context(common.nodes(gw, count, key=key, name=owner, node_concurrency=concurrency))
        rates, writes = asyncio.run(drive(server.url, args))
    for setup, r in rates.items():
        rep.row(setup, jobs_per_s=statistics.median(r), turns=len(r))
    rep.row("stored writes per job", **{s: w for s, w in writes.items()})
    base = rates["base"]
    for setup in list(SETUPS)[1:]:
        ratio = statistics.median(b / a for a, b in zip(base, rates[setup], strict=True))
        rep.ratio(f"{setup} / base jobs/s (median per turn)", ratio, target="(reported: > 1 names a bound)", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
