"""Jobs per second through one gateway, and through two.

Real processes on this machine: a private nats-server (or, with --cluster, a
3-server JetStream cluster with replicas 3), two `gpubus gateway` processes
and shared-pool CPU nodes. Closed-loop HTTP clients (each sends its next
request when the last one is answered), spread round-robin over the
gateways in use, for a fixed time. Two workloads:

- upload: multipart POST of hello.wav (366 kB), which the gateway streams
  into the object store and publishes: accepted (202) per second. No node
  runs, so this is the gateway and NATS alone.
- noop: JSON POST of a `noop` job, end to end: accepted per second, and
  jobs per second from the first submission until every job is `succeeded`
  (a node pulled it, stored a result, reported; the materializer folded it).

Then the ratio two gateways / one. Everything shares the machine's cores
(clients, gateways, nodes, NATS), so on 2 cores a second gateway buys
parallelism only where one gateway process was the bottleneck: the CPU each
role used during each run (% of one core, from /proc) says where it went.

    python -m bench.gateway_scaling [--seconds 15] [--clients 16] [--nodes 2] [--cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bus.connection import connect
from ops.embedded_nats import NatsCluster, NatsServer
from schemas import names
from testkit.harness import TESTDATA, Gateway, Proc, start_node

UPLOAD = "upload"
NOOP = "noop"
DONE_TIMEOUT_S = 300.0
_users = itertools.count()


@dataclass
class Run:
    workload: str
    gateways: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    done_s: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # role -> % of one core
    wall_s: float = 0.0  # the whole run, submissions and (noop) completion

    @property
    def accepted_per_s(self) -> float:
        return len(self.accepted) / self.seconds

    @property
    def e2e_per_s(self) -> float | None:
        return len(self.accepted) / self.done_s if self.done_s else None

    @property
    def gateway_ms_per_job(self) -> float | None:
        """Gateway CPU per accepted job: what bounds one gateway process (one
        core / this = its jobs/s ceiling), whatever else loads the machine."""
        if "gateways" not in self.cpu or not self.accepted:
            return None
        return self.cpu["gateways"] / 100 * self.wall_s * 1000 / len(self.accepted)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def _post(c: httpx.AsyncClient, url: str, workload: str, audio: bytes) -> httpx.Response:
    if workload == UPLOAD:
        return await c.post(f"{url}/api/v1/jobs", files={"file": ("hello.wav", audio)}, data={"gpu": "false"})
    return await c.post(f"{url}/api/v1/jobs", json={"kind": "noop"})


async def _all_succeeded(c: httpx.AsyncClient, url: str, n: int) -> None:
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while time.monotonic() < deadline:
        r = await c.get(f"{url}/api/v1/jobs", params={"status": "succeeded", "limit": 1})
        if r.status_code == 200 and r.json()["total"] >= n:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"not every job succeeded within {DONE_TIMEOUT_S}s")


async def drive(urls: list[str], key: str, workload: str, seconds: float, clients: int) -> Run:
    """`clients` closed loops for `seconds`, round-robin over `urls`."""
    run = Run(workload, len(urls), seconds)
    audio = (TESTDATA / "hello.wav").read_bytes()
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=limits) as c:
        t0 = time.monotonic()
        stop_at = t0 + seconds

        async def loop(i: int) -> None:
            url = urls[i % len(urls)]
            while time.monotonic() < stop_at:
                t = time.monotonic()
                r = await _post(c, url, workload, audio)
                run.latencies.append(time.monotonic() - t)
                if r.status_code == 202:
                    run.accepted.append(r.json()["job_id"])
                else:
                    run.refused[r.status_code] += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
        run.seconds = time.monotonic() - t0
        if workload == NOOP:
            await _all_succeeded(c, urls[0], len(run.accepted))
            run.done_s = time.monotonic() - t0
    return run


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(roles: dict[str, list[int]], go) -> Run:
    """Run `go()` and record each role's CPU use over it (% of one core)."""
    before = {r: sum(cpu_seconds(p) for p in pids) for r, pids in roles.items()}
    t0 = time.monotonic()
    run = go()
    wall = time.monotonic() - t0
    run.cpu = {r: 100 * (sum(cpu_seconds(p) for p in pids) - before[r]) / wall for r, pids in roles.items()}
    run.wall_s = wall
    return run


async def purge_jobs(url: str) -> None:
    """Drop the upload workload's queued jobs before nodes start pulling."""
    nc = await connect(url.split(","), name="bench-purge")
    try:
        await nc.jetstream().purge_stream(names.JOBS_STREAM)
    finally:
        await nc.close()


def new_key(gw: Gateway, workload: str, n: int) -> str:
    """A user per run, so counting its succeeded jobs counts this run's."""
    return gw.create_key(f"bench-{workload}-{n}gw-{next(_users)}", roles=("user",))


def report(runs: list[Run], args: argparse.Namespace, nats_desc: str) -> None:
    print(
        f"\ngateway scaling: {nats_desc}, {args.clients} clients, {args.seconds:.0f} s per run, "
        f"{args.nodes} shared CPU node(s) x {args.node_concurrency} (noop), {os.cpu_count()} CPUs"
    )
    roles = list(dict.fromkeys(role for r in runs for role in r.cpu))
    print(
        f"{'workload':<8} {'gateways':>8} {'accepted/s':>11} {'e2e jobs/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'gw cpu ms/job':>13}  " + "  ".join(f"{r + ' cpu%':>12}" for r in roles) + "  refused"
    )
    for r in runs:
        e2e = f"{r.e2e_per_s:.1f}" if r.e2e_per_s else "-"
        ms = f"{r.gateway_ms_per_job:.1f}" if r.gateway_ms_per_job else "-"
        print(
            f"{r.workload:<8} {r.gateways:>8} {r.accepted_per_s:>11.1f} {e2e:>11} {r.pct(0.5):>8.1f} "
            f"{r.pct(0.99):>8.1f} {ms:>13}  "
            + "  ".join(f"{r.cpu[role]:>12.0f}" if role in r.cpu else f"{'-':>12}" for role in roles)
            + f"  {dict(r.refused) or '-'}"
        )
    print(f"(cpu%: the role's processes together, % of one core; load average now {os.getloadavg()[0]:.1f})")
    per_job = [r.gateway_ms_per_job for r in runs if r.gateway_ms_per_job]
    if per_job:
        worst = max(per_job)
        print(
            f"one gateway process, by its CPU per job alone: about {1000 / worst:.0f} jobs/s per core "
            f"(the costliest workload, {worst:.1f} ms/job)"
        )
    for workload in (UPLOAD, NOOP):
        one = next((r for r in runs if r.workload == workload and r.gateways == 1), None)
        two = next((r for r in runs if r.workload == workload and r.gateways == 2), None)
        if one and two:
            line = f"ratio {workload}: two gateways / one = {two.accepted_per_s / one.accepted_per_s:.2f} accepted/s"
            if one.e2e_per_s and two.e2e_per_s:
                line += f", {two.e2e_per_s / one.e2e_per_s:.2f} end to end"
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--node-concurrency", type=int, default=4)
    p.add_argument("--cluster", action="store_true", help="3-server JetStream cluster, replicas 3")
    args = p.parse_args()
    logging.getLogger("gpubus").setLevel(logging.ERROR)  # the bench's own connections' chatter
    with tempfile.TemporaryDirectory(prefix="gpubus-gwscale-") as tmp:
        root = Path(tmp)
        nats = NatsCluster(store_dir=root / "nats", size=3) if args.cluster else NatsServer(store_dir=root / "nats")
        nats.start()
        nats_desc = "3-server JetStream cluster (R3)" if args.cluster else "one nats-server (R1)"
        settings = {"enable_noop": "true", "replicas": 3 if args.cluster else 1, "max_upload_mb": 8}
        gws: list[Gateway] = []
        nodes: list[Proc] = []
        runs: list[Run] = []
        try:
            gws = [Gateway(nats.url, root, settings=settings).start() for _ in range(2)]
            urls = [g.url for g in gws]
            servers = nats.servers if isinstance(nats, NatsCluster) else [nats]
            roles = {
                "clients": [os.getpid()],
                "gateways": [g.proc.pid for g in gws],
                "nats": [s.proc.pid for s in servers],
            }

            def bench(n: int, workload: str) -> Run:
                key = new_key(gws[0], workload, n)
                return measured(roles, lambda: asyncio.run(drive(urls[:n], key, workload, args.seconds, args.clients)))

            for n in (1, 2):  # upload first, with no node to take the jobs
                runs.append(bench(n, UPLOAD))
            asyncio.run(purge_jobs(nats.url))
            nodes = [
                start_node(
                    gws[0],
                    "cpu",
                    shared=True,
                    name=f"bench-node-{i}",
                    enable_noop="true",
                    node_concurrency=args.node_concurrency,
                )
                for i in range(args.nodes)
            ]
            roles["nodes"] = [proc.pid for proc in nodes]
            for n in (1, 2):
                runs.append(bench(n, NOOP))
        finally:
            for proc in nodes:
                proc.stop()
            for g in gws:
                g.stop()
            nats.stop()
        report(runs, args, nats_desc)
        if any(r.refused for r in runs):
            print("refused = answers other than 202 (503: NATS unavailable, 429: rate limited)")


if __name__ == "__main__":
    main()
