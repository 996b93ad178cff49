"""Benchmark: what one no-op job costs the server, counted, not timed.

Wall-clock latency on a shared 2-core machine is noise; the number of
round trips and stored writes a job makes is not. With the stack of
bench.roundtrip up (nats-server, gateway, one cpu-node), a spy connection
subscribed to `>` sees every message the processes send; `--jobs` jobs
run one at a time, bus-only (`BusClient.run_job`) then through HTTP, and
for each path it reports per job:

- requests: messages sent with a reply subject, by subject class (a
  JetStream API call, a stream publish waiting for its PubAck, an ack
  waiting for its confirmation): each is a round trip somebody waits on;
- one-way messages by class (acks without confirmation, core publishes);
- stored writes: the rise of each stream's last sequence (/jsz), which
  counts what was written even to work-queue streams that delete on ack.

The background (heartbeats, key mirror) is measured over an idle window
first and subtracted pro rata.

    python -m bench.job_requests [--jobs 200] [--node-concurrency 8]
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from nats.aio.msg import Msg

from bench import common
from bench.busclient import BusClient
from bus.sealing import RecordSeal
from ops.embedded_nats import free_port
from testkit.harness import ADMIN_TOKEN

IDLE_S = 3.0
ACK_PREFIX = "$JS.ACK."
API_PREFIX = "$JS.API."
INBOX_PREFIX = "_INBOX"  # a user node's inboxes are `_INBOX_<owner>.`


def subject_class(subject: str, data: bytes) -> str:
    """A label that groups messages by what they do, not by job."""
    if subject.startswith(ACK_PREFIX):
        verb = data.split(b" ", 1)[0].decode(errors="replace") or "+ACK"
        return f"ack {subject.split('.')[2]} {verb}"
    if subject.startswith(API_PREFIX):
        tokens = subject[len(API_PREFIX) :].split(".")
        depth = 3 if tokens[0] in ("CONSUMER", "DIRECT", "STREAM") and tokens[1:2] == ["MSG"] else 2
        return "api " + ".".join(tokens[:depth])
    tokens = subject.split(".")
    if subject.startswith("$KV.") or subject.startswith("$O."):
        return "publish " + ".".join(tokens[:2])
    return "publish " + tokens[0]


@dataclass
class Tally:
    """Messages seen by the spy, by class and by whether a reply was asked."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    one_way: collections.Counter[str] = field(default_factory=collections.Counter)

    def see(self, msg: Msg) -> None:
        if msg.subject.startswith(INBOX_PREFIX) or msg.subject.startswith("$JS.EVENT."):
            return  # replies and advisories: the other half of something counted
        if msg.reply.startswith(ACK_PREFIX):
            return  # a consumer's delivery (its reply subject is where the ack goes): not a request
        (self.requests if msg.reply else self.one_way)[subject_class(msg.subject, msg.data)] += 1

    def snapshot(self) -> Tally:
        return Tally(collections.Counter(self.requests), collections.Counter(self.one_way))


def minus(after: Tally, before: Tally) -> Tally:
    return Tally(after.requests - before.requests, after.one_way - before.one_way)


def stream_seqs(monitor_url: str) -> dict[str, int]:
    """Each stream's last sequence, from the server's monitoring port."""
    with urllib.request.urlopen(f"{monitor_url}/jsz?streams=true", timeout=5) as r:
        jsz = json.load(r)
    out: dict[str, int] = {}
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            out[stream["name"]] = int(stream["state"]["last_seq"])
    return out


@dataclass
class Window:
    """What one stretch of work cost: messages and stored writes."""

    tally: Tally
    writes: dict[str, int]
    seconds: float


async def measure(spy: Tally, monitor_url: str, work: Callable[[], Awaitable[None]]) -> Window:
    seqs0, tally0, t0 = stream_seqs(monitor_url), spy.snapshot(), time.perf_counter()
    await work()
    await asyncio.sleep(0.3)  # let trailing acks and notes land
    seconds = time.perf_counter() - t0
    seqs1 = stream_seqs(monitor_url)
    writes = {k: v - seqs0.get(k, 0) for k, v in seqs1.items() if v != seqs0.get(k, 0)}
    return Window(minus(spy.snapshot(), tally0), writes, seconds)


def per_job(rep: common.Report, path: str, w: Window, idle: Window, jobs: int) -> None:
    """Rows of per-job figures, the idle background taken out pro rata."""
    scale = w.seconds / idle.seconds

    def net(count: float, background: float) -> float:
        return max(0.0, count - background * scale) / jobs

    totals = {"requests": 0.0, "one_way": 0.0, "writes": 0.0}
    for kind in ("requests", "one_way"):
        seen, bg = getattr(w.tally, kind), getattr(idle.tally, kind)
        for cls in sorted(seen):
            value = net(seen[cls], bg.get(cls, 0))
            if value >= 0.005:
                totals[kind] += value
                rep.row(f"{path} {kind} {cls}", per_job=round(value, 3))
    for stream in sorted(w.writes):
        value = net(w.writes[stream], idle.writes.get(stream, 0))
        if value >= 0.005:
            totals["writes"] += value
            rep.row(f"{path} stored write {stream}", per_job=round(value, 3))
    rep.row(f"{path} TOTAL", **{k: round(v, 3) for k, v in totals.items()})


async def run(args, server_url: str, monitor_url: str, gw_url: str, key: str, rep: common.Report) -> None:
    spy = Tally()
    spy_nc = await nats.connect(server_url)

    async def on_msg(msg: Msg) -> None:
        spy.see(msg)

    await spy_nc.subscribe(">", cb=on_msg)
    client = await BusClient.open(server_url, RecordSeal.from_secret(ADMIN_TOKEN))
    headers = {"Authorization": f"Bearer {key}"}
    http = aiohttp.ClientSession(base_url=gw_url, headers=headers)

    async def bus_jobs() -> None:
        for _ in range(args.jobs):
            await client.run_job("bench")

    try:
        for _ in range(10):  # warm every path (consumers made, keys mirrored)
            await client.run_job("bench")
        await http_jobs_n(http, 10)
        await asyncio.sleep(1.0)
        idle = await measure(spy, monitor_url, lambda: asyncio.sleep(IDLE_S))
        bus = await measure(spy, monitor_url, bus_jobs)
        httpw = await measure(spy, monitor_url, lambda: http_jobs_n(http, args.jobs))
    finally:
        await http.close()
        await client.close()
        await spy_nc.close()
    per_job(rep, "bus-only", bus, idle, args.jobs)
    per_job(rep, "HTTP", httpw, idle, args.jobs)


async def http_jobs_n(http: aiohttp.ClientSession, n: int) -> None:
    for _ in range(n):
        async with http.post("/api/v1/jobs", json={"kind": "noop"}) as r:
            assert r.status == 202, await r.text()
            job_id = (await r.json())["job_id"]
        async with http.get(f"/api/v1/jobs/{job_id}/result", params={"wait": "30"}) as r:
            assert r.status == 200, await r.text()


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200, help="sequential jobs per path")
    p.add_argument("--node-concurrency", type=int, default=8, help="GPUBUS_NODE_CONCURRENCY of the node")
    args = p.parse_args()
    rep = common.Report("job_requests")
    print(f"job_requests: {args.jobs} sequential no-op jobs per path, messages and writes per job", flush=True)
    with contextlib.ExitStack() as stack:
        root: Path = stack.enter_context(common.workdir(args.workdir))
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync, http_port=free_port()))
        assert server.monitor_url is not None
        gw = stack.enter_context(common.gateway(server, root))
        key = gw.create_key("bench")
        stack.enter_context(common.nodes(gw, 1, key=key, node_concurrency=args.node_concurrency))
        asyncio.run(run(args, server.url, server.monitor_url, gw.url, key, rep))
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
