"""Benchmark: what one stream's synced write path sustains, one message per
write against atomic batches (nats-server 2.12+, ADR-50), raw nats-py only.

The question it answers comes before any change to how gpubus writes: is a
job's rate bound by the server's stored writes, and would committing several
writes at once (group commit) lift that bound? It writes compare-and-set
updates of distinct keys to a KV bucket (what the materializer's folds and
the record creates are), with the same number of writes in flight both ways:

- single: `KeyValue.update(key, value, last=revision)`, `--inflight` at once;
- batched: the same updates as atomic batches of `--batch` (first message a
  request, the rest published, the last one committing and answered with the
  batch's PubAck), `--inflight / --batch` batches at once.

Only streams whose messages carry no `Nats-Msg-Id` can be batched this way
(the server refuses it inside a batch): in gpubus, the KV `jobs` bucket, not
JOBS or EVENTS.

    python -m bench.batch_commit [--writes 4000] [--batch 64] [--inflight 256] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from dataclasses import replace

import nats
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from bench import common
from schemas import names

BUCKET = "batchbench"
VALUE = b"r" * 600  # about a job record's size


async def single(kv: KeyValue, revs: dict[str, int], inflight: int) -> float:
    """Writes per second, one CAS update per message."""
    gate = asyncio.Semaphore(inflight)

    async def one(key: str) -> None:
        async with gate:
            revs[key] = await kv.update(key, VALUE, last=revs[key])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in revs))
    return len(revs) / (time.perf_counter() - t0)


async def commit_batch(nc: NatsClient, keys: list[str], revs: dict[str, int]) -> None:
    """One atomic batch of CAS updates; every key's new revision from the
    batch's PubAck (the batch's messages take consecutive sequences)."""
    batch_id = uuid.uuid4().hex
    for i, key in enumerate(keys, 1):
        headers = {
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": str(i),
            "Nats-Expected-Last-Subject-Sequence": str(revs[key]),
        }
        subject = names.kv_subject(BUCKET, key)
        if i == len(keys):
            headers["Nats-Batch-Commit"] = "1"
            ack = json.loads((await nc.request(subject, VALUE, headers=headers, timeout=10)).data)
            if "error" in ack:
                raise RuntimeError(f"batch refused: {ack['error']}")
            first = ack["seq"] - len(keys) + 1
            revs.update({k: first + n for n, k in enumerate(keys)})
        elif i == 1:
            reply = await nc.request(subject, VALUE, headers=headers, timeout=10)
            if reply.data:
                raise RuntimeError(f"batch not started: {reply.data[:200]!r}")
        else:
            await nc.publish(subject, VALUE, headers=headers)


async def batched(nc: NatsClient, revs: dict[str, int], batch: int, inflight: int) -> float:
    """Writes per second, `batch` CAS updates per atomic commit."""
    gate = asyncio.Semaphore(max(1, inflight // batch))
    keys = list(revs)

    async def one(chunk: list[str]) -> None:
        async with gate:
            await commit_batch(nc, chunk, revs)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(keys[i : i + batch]) for i in range(0, len(keys), batch)))
    return len(keys) / (time.perf_counter() - t0)


async def measure(url: str, args) -> dict[str, list[float]]:
    """Alternating rounds of both ways over the same keys."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=BUCKET, history=1)
        info = await js.stream_info(names.kv_stream(BUCKET))
        await js.update_stream(replace(info.config, allow_atomic=True))
        revs = {f"k{i}": await kv.put(f"k{i}", VALUE) for i in range(args.writes)}
        rates: dict[str, list[float]] = {"single": [], "batched": []}
        for r in range(args.rounds):
            for way in ("single", "batched") if r % 2 == 0 else ("batched", "single"):
                if way == "single":
                    rate = await single(kv, revs, args.inflight)
                else:
                    rate = await batched(nc, revs, args.batch, args.inflight)
                rates[way].append(rate)
        return rates
    finally:
        await nc.close()


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=4000, help="keys, each updated once per round and way")
    p.add_argument("--batch", type=int, default=64, help="updates per atomic batch (the server allows 1000)")
    p.add_argument("--inflight", type=int, default=256, help="updates in flight, both ways")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    args = p.parse_args()
    rep = common.Report("batch_commit")
    print(f"batch_commit: {args.writes} CAS writes, batches of {args.batch}, {args.inflight} in flight", flush=True)
    with common.workdir(args.workdir) as root, common.nats_server(root, sync=args.nats_sync) as server:
        rates = asyncio.run(measure(server.url, args))
    for way, label in (("single", "one write per message"), ("batched", f"atomic batches of {args.batch}")):
        rep.row(label, writes_per_s=statistics.median(rates[way]), rounds=" ".join(f"{x:.0f}" for x in rates[way]))
    ratio = statistics.median(b / s for b, s in zip(rates["batched"], rates["single"], strict=True))
    rep.ratio(f"writes/s batched ÷ single (sync {args.nats_sync})", ratio, target="reported", ok=None)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
