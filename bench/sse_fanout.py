"""Benchmark: many `/events` (SSE) clients on one gateway.

`--clients` concurrent SSE streams on one gateway, over `--jobs` queued jobs
(no node runs, so every stream stays open): the gateway's resident memory
growth, the JetStream consumers the streams added (target: none; each used
to cost an ordered consumer and a KV watch), and the core subscriptions the
gateway holds (one per followed job). Then one job is cancelled and the time
until every one of its streams has seen the terminal state is printed.

    python -m bench.sse_fanout [--clients 500] [--jobs 50]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import nats
import psutil

from bench import common
from schemas import names
from testkit.harness import ADMIN_TOKEN


async def _consumers(url: str) -> int:
    nc = await nats.connect(url, token=ADMIN_TOKEN)
    try:
        js = nc.jetstream()
        streams = (names.EVENTS_STREAM, names.kv_stream(names.JOBS_BUCKET))
        return sum([(await js.stream_info(s)).state.consumer_count for s in streams])
    finally:
        await nc.close()


async def _follow(session: aiohttp.ClientSession, url: str, opened: asyncio.Event, counter: list[int]) -> float:
    """Reads one stream to its end; returns when (monotonic) it ended."""
    async with session.get(url) as r:
        assert r.status == 200, await r.text()
        counter[0] += 1
        if counter[0] == counter[1]:
            opened.set()
        last_status = None
        async for line in r.content:
            if line.startswith(b"data: "):
                last_status = json.loads(line[6:]).get("status", last_status)
        assert last_status == "cancelled", last_status
        return time.monotonic()


async def drive(gw, key: str, clients: int, jobs: int, rep: common.Report) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    gw_proc = psutil.Process(gw.proc.pid)
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0)) as session:
        ids = []
        for _ in range(jobs):
            async with session.post(f"{gw.url}/api/v1/jobs", json={"kind": "noop"}) as r:
                ids.append((await r.json())["job_id"])
        consumers_before = await _consumers(gw.nats_url)
        rss_before = gw_proc.memory_info().rss
        opened, counter = asyncio.Event(), [0, clients]
        streams = [
            asyncio.create_task(_follow(session, f"{gw.url}/api/v1/jobs/{ids[i % jobs]}/events", opened, counter))
            for i in range(clients)
        ]
        await asyncio.wait_for(opened.wait(), 120)
        await asyncio.sleep(1.0)  # settled
        rss_growth_mb = (gw_proc.memory_info().rss - rss_before) / 2**20
        consumers_added = await _consumers(gw.nats_url) - consumers_before
        t0 = time.monotonic()
        for job_id in ids:
            async with session.post(f"{gw.url}/api/v1/jobs/{job_id}/cancel") as r:
                assert r.status == 200, await r.text()
        ended = await asyncio.gather(*streams)
    rep.row(
        "sse fan-out",
        clients=clients,
        jobs=jobs,
        gateway_rss_growth_mb=rss_growth_mb,
        jetstream_consumers_added=consumers_added,
        all_streams_ended_after_cancels_s=max(ended) - t0,
    )
    per_500 = rss_growth_mb * 500 / clients
    rep.ratio("gateway MB per 500 SSE clients", per_500, target="< 100", ok=per_500 < 100)
    rep.ratio(
        "JetStream consumers added per SSE client", consumers_added / clients, target="== 0", ok=consumers_added == 0
    )


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--jobs", type=int, default=50)
    args = p.parse_args()
    rep = common.Report("sse_fanout")
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync))
        gw = stack.enter_context(common.gateway(server, root, max_event_streams=args.clients + 10))
        key = gw.create_key("bench")
        asyncio.run(drive(gw, key, args.clients, args.jobs, rep))
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
