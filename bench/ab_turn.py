"""One turn of bench.ab_commits against one stack, on that stack's own code
(run as a script with its tree first on sys.path, so the base commit, which
may not have this file, runs it too): `jobs` pipelined no-op jobs, bus-only
or through HTTP, after 20 to warm up. Prints {"rate": jobs per second}.

    python -c <runpy of this file> MODE URL OWNER KEY JOBS INFLIGHT
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from bench.busclient import BusClient
from bench.loops import pipelined
from bus.sealing import RecordSeal
from testkit.harness import ADMIN_TOKEN

WARMUP = 20


async def bus(url: str, owner: str, jobs: int, inflight: int) -> float:
    client = await BusClient.open(url, RecordSeal.from_secret(ADMIN_TOKEN))
    try:

        async def one(_: int) -> None:
            await client.run_job(owner)

        await pipelined(one, WARMUP, inflight=inflight)
        return (await pipelined(one, jobs, inflight=inflight))[0]
    finally:
        await client.close()


async def http(url: str, key: str, jobs: int, inflight: int) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(base_url=url, headers=headers, connector=connector) as s:

        async def one(_: int) -> None:
            async with s.post("/api/v1/jobs", json={"kind": "noop"}) as r:
                assert r.status == 202, await r.text()
                job = await r.json()
            async with s.get(f"/api/v1/jobs/{job['job_id']}/result", params={"wait": "30"}) as r:
                assert r.status == 200, await r.text()

        await pipelined(one, WARMUP, inflight=inflight)
        return (await pipelined(one, jobs, inflight=inflight))[0]


def main() -> None:
    mode, url, owner, key, jobs, inflight = sys.argv[1:7]
    run = bus(url, owner, int(jobs), int(inflight)) if mode == "bus" else http(url, key, int(jobs), int(inflight))
    print(json.dumps({"rate": asyncio.run(run)}))


if __name__ == "__main__":
    main()
