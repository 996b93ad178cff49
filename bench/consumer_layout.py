"""Benchmark: what idle consumers on a work-queue stream cost an active one.

bench.owner_scale showed jobs/s for one active owner falling to a sixth at
10,000 owners (20,000 consumers on JOBS) while publish latency held. This
isolates the cause with raw nats-py, no gpubus code: one active pull
consumer takes jobs (publish, fetch, ack with the server's confirmation)
while `--idle` other consumers, each filtered on its own owner's subject,
sit on the same streams. Two layouts of the same consumers, on two servers
measured in alternating blocks so machine load hits both alike:

- one stream holding every owner (gpubus's JOBS today);
- `--shards` streams, an owner's subjects in the stream its id hashes to
  (each holds about idle/shards consumers).

    python -m bench.consumer_layout [--idle 0,2000,20000] [--shards 64] [--jobs 400]
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from bench import common
from bus.topology import JOBS_MAX_CONSUMERS

BLOCK = 50
CREATE_CONCURRENCY = 64


@dataclass(frozen=True)
class Layout:
    name: str
    shards: int

    def stream(self, owner: str) -> str:
        return f"Q{self.shard(owner)}"

    def subject(self, owner: str) -> str:
        return f"q.{self.shard(owner)}.{owner}.job"

    def shard(self, owner: str) -> int:
        return zlib.crc32(owner.encode()) % self.shards


async def add_streams(js, layout: Layout) -> None:
    for k in range(layout.shards):
        await js.add_stream(
            StreamConfig(
                name=f"Q{k}",
                subjects=[f"q.{k}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_consumers=JOBS_MAX_CONSUMERS,  # a work queue's default is 1,000
            )
        )


async def add_consumers(js, layout: Layout, first: int, last: int) -> None:
    """Durable pull consumers for owners first..last-1, many requests in flight."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> None:
        owner = f"o{i}"
        async with gate:
            await js.add_consumer(
                layout.stream(owner),
                ConsumerConfig(durable_name=owner, ack_policy=AckPolicy.EXPLICIT, filter_subject=layout.subject(owner)),
            )

    await asyncio.gather(*(one(i) for i in range(first, last)))


async def jobs(js, layout: Layout, n: int) -> list[float]:
    """Seconds per job for owner o0: publish (PubAck), fetch, ack confirmed."""
    sub = await js.pull_subscribe_bind("o0", layout.stream("o0"))
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        await js.publish(layout.subject("o0"), b"x")
        (msg,) = await sub.fetch(1, timeout=10)
        await msg.ack_sync()
        took.append(time.perf_counter() - t0)
    await sub.unsubscribe()
    return took


async def measure(urls: dict[Layout, str], levels: list[int], n_jobs: int) -> dict[tuple[int, str], list[float]]:
    conns = {layout: await nats.connect(url) for layout, url in urls.items()}
    out: dict[tuple[int, str], list[float]] = {}
    try:
        have = 0
        for layout, nc in conns.items():
            await add_streams(nc.jetstream(timeout=60), layout)
        for level in levels:
            for layout, nc in conns.items():
                t0 = time.perf_counter()
                await add_consumers(nc.jetstream(timeout=60), layout, have, level + 1)  # o0 and `level` idle
                print(f"  {layout.name}: {level} idle consumers made in {time.perf_counter() - t0:.1f}s", flush=True)
            have = level + 1
            order = list(conns.items())
            size = min(BLOCK, n_jobs)
            for block in range(max(1, n_jobs // size)):
                for layout, nc in order if block % 2 == 0 else order[::-1]:
                    out.setdefault((level, layout.name), []).extend(await jobs(nc.jetstream(), layout, size))
    finally:
        for nc in conns.values():
            await nc.close()
    return out


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--idle", default="0,2000,20000", help="idle consumers at each level (ascending)")
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--jobs", type=int, default=400, help="jobs per layout per level")
    args = p.parse_args()
    levels = [int(x) for x in args.idle.split(",")]
    one, sharded = Layout("one stream", 1), Layout(f"{args.shards} streams", args.shards)
    rep = common.Report("consumer_layout")
    print(f"consumer_layout: idle consumers {levels}, {args.jobs} jobs per cell", flush=True)
    with (
        common.workdir(args.workdir) as root,
        common.nats_server(root, "one", sync=args.nats_sync) as s1,
        common.nats_server(root, "sharded", sync=args.nats_sync) as s2,
    ):
        took = asyncio.run(measure({one: s1.url, sharded: s2.url}, levels, args.jobs))
    for (level, name), samples in took.items():
        rep.row(f"{level} idle, {name}", jobs_per_s=len(samples) / sum(samples), **common.latency_summary(samples))
    lo, hi = min(levels), max(levels)

    def p50(level: int, layout: Layout) -> float:
        return common.percentile(took[(level, layout.name)], 50)

    rep.ratio(f"one stream: job p50 at {hi} idle / at {lo}", p50(hi, one) / p50(lo, one), target="(reported)", ok=None)
    rep.ratio(
        f"{sharded.name}: job p50 at {hi} idle / at {lo}",
        p50(hi, sharded) / p50(lo, sharded),
        target="(reported)",
        ok=None,
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
