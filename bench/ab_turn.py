"""One turn of bench.ab_commits against one stack, on that stack's own code
(run as a script with its tree first on sys.path, so the base commit, which
may not have this file, runs it too): `jobs` pipelined no-op jobs, bus-only
or through HTTP, after 20 to warm up. Prints {"rate": jobs per second}.
Modes `bus-seq` and `http-seq` run them one at a time instead and print
{"p50_ms": the median latency}, timed as bench.roundtrip times it (bus-only:
publish to `succeeded`; HTTP: POST to the long poll's 200).

    python -c <runpy of this file> MODE URL OWNER KEY JOBS INFLIGHT
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from bench import common
from bench.busclient import BusClient
from bench.loops import pipelined, sequential
from bus.sealing import RecordSeal
from testkit.harness import ADMIN_TOKEN

WARMUP = 20


async def bus(url: str, owner: str, jobs: int, inflight: int, seq: bool) -> dict[str, float]:
    client = await BusClient.open(url, RecordSeal.from_secret(ADMIN_TOKEN))
    try:

        async def one(_: int) -> None:
            await client.run_job(owner)

        if seq:
            await sequential(one, 0, warmup=WARMUP)
            return {"p50_ms": common.percentile([await client.run_job(owner) for _ in range(jobs)], 50) * 1e3}
        await pipelined(one, WARMUP, inflight=inflight)
        return {"rate": (await pipelined(one, jobs, inflight=inflight))[0]}
    finally:
        await client.close()


async def http(url: str, key: str, jobs: int, inflight: int, seq: bool) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(base_url=url, headers=headers, connector=connector) as s:

        async def one(_: int) -> None:
            async with s.post("/api/v1/jobs", json={"kind": "noop"}) as r:
                assert r.status == 202, await r.text()
                job = await r.json()
            async with s.get(f"/api/v1/jobs/{job['job_id']}/result", params={"wait": "30"}) as r:
                assert r.status == 200, await r.text()

        if seq:
            return {"p50_ms": common.percentile(await sequential(one, jobs, warmup=WARMUP), 50) * 1e3}
        await pipelined(one, WARMUP, inflight=inflight)
        return {"rate": (await pipelined(one, jobs, inflight=inflight))[0]}


def main() -> None:
    mode, url, owner, key, jobs, inflight = sys.argv[1:7]
    path, seq = mode.removesuffix("-seq"), mode.endswith("-seq")
    if path == "bus":
        run = bus(url, owner, int(jobs), int(inflight), seq)
    else:
        run = http(url, key, int(jobs), int(inflight), seq)
    print(json.dumps(asyncio.run(run)))


if __name__ == "__main__":
    main()
