"""Each benchmark script runs end to end with tiny sizes and prints its ratio
lines last. Nothing here looks at a time or a ratio's value: benchmarks are
run by hand (see README), never judged inside the test suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_FALLBACK_EXIT = 3

SCRIPTS = {
    "roundtrip": "--seq 5 --pipe 20 --warmup 2 --inflight 4 --node-concurrency 2 --syncs 10".split(),
    "staging": ["--mib", "2", "--rss-mib", "4"],
    "transcription": ["--clip", "4", "--repeat", "2", "--jobs", "1", "--rounds", "1", "--concurrency", "2"],
    "fallback": ["--clip", "4", "--ack-wait", "2", "--trials", "1"],
    "diarization": ["--clip", "8", "--rounds", "1", "--queue", "2"],
    "diarization_ab": ["--base", "HEAD", "--clip", "8", "--rounds", "1"],
    "documents": ["--pages", "2", "--images", "1", "--jobs", "1", "--rounds", "1"],
    "sse_fanout": ["--clients", "10", "--jobs", "3"],
    "soak": ["--jobs", "40", "--blocks", "2", "--inflight", "4", "--warmup", "4"],
    "job_listing": ["--records", "30,400", "--limit", "5"],  # 400: past the whole read, through a window
    "scale": ["--jobs", "20", "--nodes", "1,2", "--owners", "1,3", "--inflight", "4", "--capacity", "2"],
    "gpu_pipeline": ["--jobs", "3", "--minutes", "0.5", "--rtfx", "50"],
    "consumer_layout": ["--idle", "0,20", "--shards", "4", "--jobs", "10"],
    "owner_scale": ["--owners", "1,5", "--jobs", "20", "--active", "2", "--inflight", "4", "--idle-s", "1"],
    "clip_batching": ["--clips", "4", "--batch", "2"],
    "pipeline_bound": ["--jobs", "8", "--turns", "1", "--inflight", "4", "--node-concurrency", "2", "--warmup", "2"],
    "batch_commit": ["--writes", "64", "--batch", "16", "--inflight", "32", "--rounds", "1"],
    "ab_commits": ["--base", "HEAD", "--turns", "1", "--jobs", "5", "--inflight", "2", "--node-concurrency", "2"],
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_runs_with_tiny_sizes(name: str, tmp_path: Path) -> None:
    # Given a benchmark script and tiny sizes
    out_json = tmp_path / f"{name}.json"
    # When it runs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            f"bench.{name}",
            *SCRIPTS[name],
            "--json",
            str(out_json),
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    if name == "fallback" and proc.returncode == NO_FALLBACK_EXIT:
        pytest.skip("no fallback router in this build: " + proc.stdout.strip().splitlines()[-1])
    # Then it exits cleanly and its last lines are its ratios
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith(f"RATIO {name}: "), proc.stdout[-2000:]
    report = json.loads(out_json.read_text())
    assert report["bench"] == name and report["ratios"] and report["rows"]
    assert all(isinstance(r["value"], float) for r in report["ratios"])
    if name == "roundtrip":
        # and each system's CPU per pipelined job was measured on its own processes
        cpu = {r["what"]: r for r in report["rows"] if r["what"].endswith(" cpu")}
        assert len(cpu) == 4 and all(r["total"] > 0 for r in cpu.values()), cpu
        # and, where strace can count them, the disk syncs of each store: with
        # every write synced, a raw job syncs its write and its removal, a
        # gpubus job more (its record and its outcome too)
        syncs = {r["what"]: r["syncs_per_job"] for r in report["rows"] if r["what"].endswith(" syncs")}
        if syncs:
            raw, bus = syncs["raw nats-py syncs"], syncs["gpubus bus-only syncs"]
            assert raw >= 1 and bus > raw, syncs
        else:  # no strace, or one that may not attach here: the bench says so
            assert "(disk syncs not counted: " in proc.stdout, proc.stdout[-2000:]
