"""Benchmark 2: file staging, gpubus against raw object-store I/O in one run.

- upload: a file `POST`ed through the gateway (multipart, by curl)
  until the 202, against nats-py's `ObjectStore.put` of the same file
  (1 MiB chunks, its fastest setting) from this process;
- fetch: `bus.objects.read_to_file` (what a node runs) against a raw pull of
  the same object's chunks with an ordered consumer, both writing to a file
  and checking SHA-256;
- memory: peak RSS growth of the real gateway process during an upload of a
  large file, and of a real node process while it fetches that file as its
  job's input (random bytes: the job then fails to decode, after the fetch).

    python -m bench.staging [--mib 256] [--rss-mib 1024]
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import ObjectMeta, ObjectMetaOptions

from bench import common
from bus import objects
from schemas import names
from testkit.harness import wait_job

MIB = 2**20
RAW_BUCKET = "rawbench"
WRITE_BLOCK = 4 * MIB


def make_file(path: Path, mib: int) -> Path:
    """Random bytes (incompressible, like media) that start with NULs: random
    data opens with `<`, `{`, `[` or white space about 1 time in 50, which the
    gateway's sniffing rightly refuses as text (415)."""
    with path.open("wb") as f:
        for i in range(0, mib * MIB, WRITE_BLOCK):
            block = os.urandom(WRITE_BLOCK)
            f.write(b"\0" * 16 + block[16:] if i == 0 else block)
    return path


def upload(gw_url: str, key: str, path: Path) -> dict:
    """curl when there is one (what a user would run; httpx's pure-Python
    multipart encoder would make the client the bottleneck on 2 cores)."""
    curl = shutil.which("curl")
    if curl:
        out = subprocess.run(
            [
                curl,
                "-sS",
                "-H",
                f"Authorization: Bearer {key}",
                "-F",
                f"file=@{path};type=application/octet-stream",
                "-w",
                "\n%{http_code}",
                f"{gw_url}/api/v1/jobs",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        ).stdout
        body, _, status = out.rpartition("\n")
        assert status == "202", out
        return json.loads(body)
    with (
        httpx.Client(base_url=gw_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c,
        path.open("rb") as f,
    ):
        r = c.post("/api/v1/jobs", files={"file": (path.name, f, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()


async def raw_put(url: str, path: Path, name: str) -> float:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        obs = await js.create_object_store(RAW_BUCKET)
        t0 = time.perf_counter()
        with path.open("rb") as f:
            await obs.put(name, f, meta=ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=MIB)))
        return time.perf_counter() - t0
    finally:
        await nc.close()


async def fetch_once(url: str, bucket: str, name: str, dest: Path, *, raw: bool) -> float:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        t0 = time.perf_counter()
        if raw:
            await raw_chunk_pull(js, bucket, name, dest)
        else:
            await objects.read_to_file(js, bucket, name, dest)
        elapsed = time.perf_counter() - t0
        dest.unlink()
        return elapsed
    finally:
        await nc.close()


async def raw_chunk_pull(js, bucket: str, name: str, dest: Path) -> None:
    """The fastest plain nats-py read measured here: an ordered push
    consumer on the object's chunk subject, digest checked by hand."""
    info = await objects.object_info(js, bucket, name)
    sub = await js.subscribe(f"$O.{bucket}.C.{info.nuid}", ordered_consumer=True)
    sha = hashlib.sha256()
    try:
        with dest.open("wb") as f:
            for _ in range(info.chunks):
                msg = await sub.next_msg(timeout=30)
                sha.update(msg.data)
                await asyncio.to_thread(f.write, msg.data)
    finally:
        await sub.unsubscribe()
    assert sha.digest() == base64.urlsafe_b64decode(info.digest.split("=", 1)[1]), "raw pull: digest mismatch"


def rss_phase(gw, root: Path, rss_mib: int, rep: common.Report) -> tuple[float, float]:
    """Gateway RSS during the upload, node RSS while it fetches the input."""
    owner = "rss"
    key = gw.create_key(owner)
    big = make_file(root / "big.bin", rss_mib)
    with common.nodes(gw, 1, key=key, name="rss-node") as (node,):
        pids = {"gateway": gw.proc.pid, "node": node.pid}
        with common.RssSampler(pids) as rss:
            t0 = time.perf_counter()
            job = upload(gw.url, key, big)
            up_s = time.perf_counter() - t0
            with gw.client(key) as c:
                final = wait_job(c, job["job_id"], timeout_s=600)
        big.unlink()
    rep.row(
        f"gateway upload {rss_mib} MiB", mb_per_s=rss_mib * MIB / up_s / 1e6, rss_growth_mb=rss.growth_mb("gateway")
    )
    rep.row(
        f"node fetch {rss_mib} MiB (job {final['status']})",
        rss_growth_mb=rss.growth_mb("node"),
        error=(final.get("error") or {}).get("code", "-"),
    )
    return rss.growth_mb("gateway"), rss.growth_mb("node")


def throughput(gw, server, root: Path, args) -> dict[str, float]:
    """Seconds per system, summed over rounds that alternate which side goes
    first (the second reader of an object finds it in the page cache)."""
    path = make_file(root / "payload.bin", args.mib)
    key = gw.create_key("bench")
    took = {"raw_put": 0.0, "upload": 0.0, "raw_pull": 0.0, "fetch": 0.0}
    for r in range(args.rounds):
        first_raw = r % 2 == 0
        for raw in (first_raw, not first_raw):
            if raw:
                took["raw_put"] += asyncio.run(raw_put(server.url, path, f"p{r}"))
            else:
                t0 = time.perf_counter()
                job = upload(gw.url, key, path)
                took["upload"] += time.perf_counter() - t0
        with gw.client(key) as c:
            name = c.get(f"/api/v1/jobs/{job['job_id']}").json()["input"]["object_name"]
        for raw in (first_raw, not first_raw):
            took["raw_pull" if raw else "fetch"] += asyncio.run(
                fetch_once(server.url, names.files_bucket("bench"), name, root / "fetched.bin", raw=raw)
            )
    path.unlink()
    return took


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="size of the throughput file")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each measurement")
    p.add_argument("--rss-mib", type=int, default=1024, help="size of the file for the memory check (0 = skip)")
    args = p.parse_args()
    rep = common.Report("staging")
    print(f"staging: {args.mib} MiB x {args.rounds} rounds throughput, {args.rss_mib} MiB memory check", flush=True)
    with common.workdir(args.workdir) as root, common.nats_server(root, sync=args.nats_sync) as server:
        max_mb = max(args.mib, args.rss_mib) + 16
        with common.gateway(server, root, max_upload_mb=max_mb) as gw:
            took = throughput(gw, server, root, args)
            size = args.mib * MIB * args.rounds
            labels = {
                "raw_put": "raw ObjectStore.put (1 MiB chunks)",
                "upload": "gpubus upload through the gateway",
                "raw_pull": "raw ordered-consumer chunk pull",
                "fetch": "gpubus read_to_file (node fetch)",
            }
            for k, label in labels.items():
                rep.row(label, mb_per_s=size / took[k] / 1e6)
            rss = rss_phase(gw, root, args.rss_mib, rep) if args.rss_mib else None
    up_r, fetch_r = took["raw_put"] / took["upload"], took["raw_pull"] / took["fetch"]
    rep.ratio("upload MB/s / raw put MB/s", up_r, target=">= 0.8", ok=up_r >= 0.8)
    rep.ratio("fetch MB/s / raw chunk pull MB/s", fetch_r, target=">= 0.8", ok=fetch_r >= 0.8)
    if rss is not None:
        for who, growth in zip(("gateway", "node"), rss, strict=True):
            rep.ratio(f"{who} peak RSS growth, MB ({args.rss_mib} MiB file)", growth, target="< 50", ok=growth < 50)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
