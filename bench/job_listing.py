"""Benchmark: an owner's job listing as the owner's records grow.

The web page lists the owner's newest 50 jobs every 4 s
(`GET /api/v1/jobs?limit=50`). This fills one owner's records (made the
way a gateway makes them, sealed, straight into KV `jobs`) up to each size
of `--records` and times that listing through a real gateway, with the
gateway's CPU for it. A listing that answers `limit` records should cost
about the same whatever the owner keeps: the ratio compares the largest
size with the smallest, in the same run (docs/ARCHITECTURE.md, "Measured:
an owner's job listing, bounded by its limit").

    python -m bench.job_listing [--records 1000,10000,30000] [--limit 50]
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import nats

from bench import common
from bus.jobstore import JobStore
from bus.sealing import RecordSeal
from schemas import names
from schemas.jobs import JobRecord, JobStatus, now
from testkit.harness import ADMIN_TOKEN
from testkit.records import noop_record

OWNER = "bench"
CREATE_INFLIGHT = 256
TIMED_LISTINGS = 20  # the gateway's CPU is read in 10 ms ticks: 0.5 ms a listing


def _record(i: int) -> JobRecord:
    """A finished no-op job's record, one second apart from the last."""
    t = now() - 86_400 + i
    return noop_record(OWNER, t, status=JobStatus.SUCCEEDED, finished_at=t)


async def fill(url: str, start: int, stop: int) -> None:
    """Records `start`..`stop` of the owner, `CREATE_INFLIGHT` at a time."""
    nc = await nats.connect(url, token=ADMIN_TOKEN)
    try:
        js = nc.jetstream()
        jobs = JobStore(await js.key_value(names.JOBS_BUCKET), RecordSeal.from_secret(ADMIN_TOKEN), js=js)
        for lo in range(start, stop, CREATE_INFLIGHT):
            await asyncio.gather(*(jobs.create(_record(i)) for i in range(lo, min(stop, lo + CREATE_INFLIGHT))))
    finally:
        await nc.close()


def fastest_listing(client: httpx.Client, limit: int) -> tuple[float, int]:
    """The fastest of `TIMED_LISTINGS` listings: (wall s, the total it names)."""
    best: tuple[float, int] | None = None
    for _ in range(TIMED_LISTINGS):
        t0 = time.perf_counter()
        r = client.get("/api/v1/jobs", params={"limit": limit})
        wall = time.perf_counter() - t0
        r.raise_for_status()
        body = r.json()
        assert len(body["jobs"]) == min(limit, body["total"]), body["total"]
        if best is None or wall < best[0]:
            best = (wall, body["total"])
    assert best is not None
    return best


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--records", default="1000,10000,30000", help="sizes of the owner's records, ascending")
    p.add_argument("--limit", type=int, default=50, help="records a listing answers (the web page asks 50)")
    args = p.parse_args()
    sizes = [int(x) for x in args.records.split(",")]
    if len(sizes) < 2 or sizes != sorted(sizes):
        p.error("--records: two or more sizes, ascending")
    rep = common.Report("job_listing")
    print(f"job_listing: GET /api/v1/jobs?limit={args.limit} with {args.records} records", flush=True)
    walls: list[float] = []
    cpus: list[float] = []
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync))
        gw = stack.enter_context(common.gateway(server, root))
        client = stack.enter_context(gw.client(gw.create_key(OWNER)))
        cpu = common.CpuMeter({"gateway": gw.proc.pid})
        have = 0
        for size in sizes:
            asyncio.run(fill(server.url, have, size))
            have = size
            with cpu.turn(str(size), ("gateway",), TIMED_LISTINGS):
                wall, total = fastest_listing(client, args.limit)
            assert total == size, (total, size)
            walls.append(wall)
            gateway_ms = cpu.per_job_ms(str(size))["gateway"]  # a listing's, on the mean
            cpus.append(gateway_ms)
            rep.row(
                f"{size} records", listing_ms=wall * 1e3, gateway_cpu_ms=gateway_ms, per_record_us=wall / size * 1e6
            )
    ratio = walls[-1] / walls[0]
    rep.ratio(
        f"listing at {sizes[-1]} records / at {sizes[0]}",
        ratio,
        target="<= 2 (bounded by the limit, not the records)",
        ok=ratio <= 2,
    )
    # What a listing costs the gateway's event loop, where the owner's
    # records were read before (nats-server's count over the owner's keys
    # is in the wall time, not here).
    cpu_ratio = cpus[-1] / max(cpus[0], 1e-3)
    rep.ratio(
        f"gateway CPU per listing at {sizes[-1]} records / at {sizes[0]}",
        cpu_ratio,
        target="<= 2 (the gateway reads about the limit)",
        ok=cpu_ratio <= 2,
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
