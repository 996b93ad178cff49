"""Benchmark: pipelined no-op throughput of this checkout against an earlier
commit, side by side in one run.

Both stacks are up at once, each from its own code: this checkout, and the
base commit checked out into a temporary git worktree; each has its own
nats-server, gateway and node (`--node-concurrency`, default 64 like
bench.roundtrip). Turns alternate between them (the order flipping every
turn), bus-only (`JobPublisher` to the `succeeded` event) then HTTP
(`POST /api/v1/jobs` then `GET …/result?wait=30`), each turn a fresh client
process running that stack's own code (bench/ab_turn.py, run with the
stack's tree first on the path). Load from elsewhere on a shared machine
then hits both alike, where runs of bench.roundtrip one after the other
differed by 2x between neighbours.

With `--sequential` each turn runs its jobs one at a time and the figure
is the median latency (bench.ab_turn's `-seq` modes), compared as this
checkout's p50 over the base's (lower is better).

With `--shared` the node serves the shared pool instead of the user's own
lane (HTTP turns only: the user has no node of their own, so jobs go to
the pool), where the base may have one FIFO consumer and this checkout a
share per owner.

    python -m bench.ab_commits [--base main] [--turns 12] [--jobs 300] [--inflight 64] [--shared] [--sequential]
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import common

TURN = Path(__file__).with_name("ab_turn.py")
MODES = ("bus", "http")
RUN_TURN = (
    "import runpy, sys; sys.path.insert(0, '.'); sys.argv = ['ab_turn', *sys.argv[1:]]; "
    "runpy.run_path(sys.argv.pop(1), run_name='__main__')"
)


@contextlib.contextmanager
def worktree(base: str) -> Iterator[Path]:
    """The base commit, checked out next to nothing: a detached worktree, removed after."""
    with tempfile.TemporaryDirectory(prefix="gpubus-base-") as d:
        path = Path(d) / "tree"
        git = ["git", "-C", str(common.REPO)]
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(path), base], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def turn(tree: Path, mode: str, url: str, key: str, jobs: int, inflight: int) -> float:
    """One client process on `tree`'s code: jobs/s of `jobs` pipelined jobs,
    or for a `-seq` mode the p50 in ms of `jobs` sequential ones."""
    args = [str(TURN), mode, url, "bench", key, str(jobs), str(inflight)]
    out = subprocess.run([sys.executable, "-c", RUN_TURN, *args], cwd=tree, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"turn on {tree} failed: {out.stderr[-2000:]}")
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return float(figures["p50_ms"] if mode.endswith("-seq") else figures["rate"])


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--base", default="main", help="the commit to compare with (any git revision)")
    p.add_argument("--turns", type=int, default=12, help="turns per stack and mode")
    p.add_argument("--jobs", type=int, default=300, help="pipelined jobs per turn")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--node-concurrency", type=int, default=64)
    p.add_argument("--shared", action="store_true", help="a shared-pool node; HTTP turns only")
    p.add_argument("--sequential", action="store_true", help="p50 latency of jobs one at a time, not jobs/s")
    args = p.parse_args()
    modes: tuple[str, ...] = ("http",) if args.shared else MODES
    if args.sequential:
        modes = tuple(f"{m}-seq" for m in modes)
    rep = common.Report("ab_commits")
    print(f"ab_commits: this checkout against {args.base}, {args.turns} turns of {args.jobs} jobs", flush=True)
    here = os.getcwd()
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        trees = {"base": stack.enter_context(worktree(args.base)), "head": common.REPO}
        stacks: dict[str, tuple[Path, str, str, str]] = {}
        for name, tree in trees.items():
            os.chdir(tree)  # the gateway and node processes start on this tree's code
            try:
                server = stack.enter_context(common.nats_server(root / name, sync=args.nats_sync))
                gw = stack.enter_context(common.gateway(server, root / name))
                key = gw.create_key("bench")
                node_key = None if args.shared else key
                stack.enter_context(
                    common.nodes(gw, 1, key=node_key, shared=args.shared, node_concurrency=args.node_concurrency)
                )
            finally:
                os.chdir(here)
            stacks[name] = (tree, server.url, gw.url, key)
        rates: dict[tuple[str, str], list[float]] = {(n, m): [] for n in trees for m in modes}
        for i in range(args.turns):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for mode in modes:
                for name in order:
                    tree, nats_url, gw_url, key = stacks[name]
                    url = nats_url if mode.startswith("bus") else gw_url
                    rates[(name, mode)].append(turn(tree, mode, url, key, args.jobs, args.inflight))
    unit = "p50_ms" if args.sequential else "jobs_per_s"
    for mode in modes:
        for name in trees:
            rep.row(f"{name} {mode}", **{unit: statistics.median(rates[(name, mode)])})
    for mode in modes:
        pairs = [h / b for b, h in zip(rates[("base", mode)], rates[("head", mode)], strict=True)]
        ratio = statistics.median(pairs)
        if args.sequential:
            rep.ratio(f"{mode} p50 this checkout / {args.base} (median per turn)", ratio, target="<= 1", ok=ratio <= 1)
        else:
            rep.ratio(
                f"{mode} jobs/s this checkout / {args.base} (median per turn)", ratio, target=">= 0.9", ok=ratio >= 0.9
            )
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
