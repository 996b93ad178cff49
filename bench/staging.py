"""Benchmark 2: file staging, gpubus against raw object-store I/O in one run.

- upload: a file `POST`ed through the gateway (multipart, streamed by httpx)
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
import os
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import ObjectMeta, ObjectMetaOptions

from bench import common
from bus import objects
from schemas import names
from tests.harness import wait_job

MIB = 2**20
RAW_BUCKET = "rawbench"
WRITE_BLOCK = 4 * MIB


def make_file(path: Path, mib: int) -> Path:
    with path.open("wb") as f:
        for _ in range(0, mib * MIB, WRITE_BLOCK):
            f.write(os.urandom(WRITE_BLOCK))
    return path


def upload(gw_url: str, key: str, path: Path) -> dict:
    with httpx.Client(base_url=gw_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c, path.open("rb") as f:
        r = c.post("/api/v1/jobs", files={"file": (path.name, f, "application/octet-stream")})
    assert r.status_code == 202, r.text
    return r.json()


async def raw_put(url: str, path: Path) -> float:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        obs = await js.create_object_store(RAW_BUCKET)
        t0 = time.perf_counter()
        with path.open("rb") as f:
            await obs.put(path.name, f, meta=ObjectMeta(name=path.name, options=ObjectMetaOptions(max_chunk_size=MIB)))
        return time.perf_counter() - t0
    finally:
        await nc.close()


async def fetches(url: str, bucket: str, name: str, dest: Path) -> tuple[float, float]:
    """(gpubus read_to_file seconds, raw ordered-consumer chunk pull seconds)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        t0 = time.perf_counter()
        await objects.read_to_file(js, bucket, name, dest)
        ours = time.perf_counter() - t0
        dest.unlink()
        t0 = time.perf_counter()
        await raw_chunk_pull(js, bucket, name, dest)
        raw = time.perf_counter() - t0
        dest.unlink()
        return ours, raw
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
    rep.row(f"gateway upload {rss_mib} MiB", mb_per_s=rss_mib * MIB / up_s / 1e6, rss_growth_mb=rss.growth_mb("gateway"))
    rep.row(
        f"node fetch {rss_mib} MiB (job {final['status']})",
        rss_growth_mb=rss.growth_mb("node"), error=(final.get("error") or {}).get("code", "-"),
    )
    return rss.growth_mb("gateway"), rss.growth_mb("node")


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="size of the throughput file")
    p.add_argument("--rss-mib", type=int, default=1024, help="size of the file for the memory check (0 = skip)")
    args = p.parse_args()
    rep = common.Report("staging")
    print(f"staging: {args.mib} MiB throughput, {args.rss_mib} MiB memory check", flush=True)
    with common.workdir(args.workdir) as root, common.nats_server(root) as server:
        path = make_file(root / "payload.bin", args.mib)
        max_mb = max(args.mib, args.rss_mib) + 16
        with common.gateway(server, root, max_upload_mb=max_mb) as gw:
            key = gw.create_key("bench")
            raw_put_s = asyncio.run(raw_put(server.url, path))
            t0 = time.perf_counter()
            job = upload(gw.url, key, path)
            up_s = time.perf_counter() - t0
            with gw.client(key) as c:
                rec = c.get(f"/api/v1/jobs/{job['job_id']}").json()
            ours_s, raw_s = asyncio.run(
                fetches(server.url, names.files_bucket("bench"), rec["input"]["object_name"], root / "fetched.bin")
            )
            size = args.mib * MIB
            rep.row("raw ObjectStore.put (1 MiB chunks)", mb_per_s=size / raw_put_s / 1e6)
            rep.row("gpubus upload through the gateway", mb_per_s=size / up_s / 1e6)
            rep.row("raw ordered-consumer chunk pull", mb_per_s=size / raw_s / 1e6)
            rep.row("gpubus read_to_file (node fetch)", mb_per_s=size / ours_s / 1e6)
            path.unlink()
            rss = rss_phase(gw, root, args.rss_mib, rep) if args.rss_mib else None
    up_r, fetch_r = raw_put_s / up_s, raw_s / ours_s
    rep.ratio("upload MB/s / raw put MB/s", up_r, target=">= 0.8", ok=up_r >= 0.8)
    rep.ratio("fetch MB/s / raw chunk pull MB/s", fetch_r, target=">= 0.8", ok=fetch_r >= 0.8)
    if rss is not None:
        for who, growth in zip(("gateway", "node"), rss):
            rep.ratio(f"{who} peak RSS growth, MB ({args.rss_mib} MiB file)", growth, target="< 50", ok=growth < 50)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
