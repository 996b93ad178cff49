"""Benchmark: a diarized job's cost outside the node's work, this checkout's
node against an earlier commit's, interleaved in one run.

One nats-server and one gateway (this checkout's); two cpu-nodes, each
serving its own owner: one started on this checkout's code, one on the base
commit's (checked out into a temporary git worktree, bench/ab_commits.py).
tests/data/long.wav goes as a diarized job to each in turn, the order
flipping every round, so load from elsewhere on a shared machine hits both
alike. Reported per node: the wall time from upload to succeeded, the
node's own work (`summary.processing_s`: the decode read back, Whisper and
diarization), and what lies between the two (upload, staging, pull, fetch,
the node's decode of the upload, result, succeeded event, long poll), whose
medians are the figure to compare: the engines' own time varies fivefold on
a busy machine, the time around them much less.

    python -m bench.diarization_ab [--base main] [--rounds 8] [--clip SECONDS]
"""

from __future__ import annotations

import contextlib
import os
import statistics
from pathlib import Path

from bench import common
from bench.ab_commits import worktree
from bench.diarization import through_node
from testkit.harness import TESTDATA, Proc, start_node


def node_on(tree: Path, gw, key: str, name: str) -> Proc:
    """A cpu-node process running `tree`'s code (a `-m` process puts its
    working directory first on its path)."""
    here = os.getcwd()
    os.chdir(tree)
    try:
        return start_node(gw, "cpu", key=key, name=name, enable_noop="true")
    finally:
        os.chdir(here)


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--base", default="main", help="the commit to compare with (any git revision)")
    p.add_argument("--rounds", type=int, default=8, help="jobs per node, alternating")
    p.add_argument("--clip", type=float, default=0.0, help="use only the first N seconds of long.wav (smoke tests)")
    args = p.parse_args()
    rep = common.Report("diarization_ab")
    print(f"diarization_ab: this checkout against {args.base}, {args.rounds} rounds", flush=True)
    runs: dict[str, list[tuple[float, float]]] = {"base": [], "head": []}
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.workdir(args.workdir))
        path = (
            common.clip_wav(TESTDATA / "long.wav", root / "clip.wav", args.clip) if args.clip else TESTDATA / "long.wav"
        )
        trees = {"base": stack.enter_context(worktree(args.base)), "head": common.REPO}
        server = stack.enter_context(common.nats_server(root, sync=args.nats_sync))
        gw = stack.enter_context(common.gateway(server, root, max_upload_mb=2048))
        clients = {}
        for name, tree in trees.items():
            key = gw.create_key(f"bench-{name}")
            stack.callback(node_on(tree, gw, key, name).stop)
            clients[name] = stack.enter_context(gw.client(key))
            through_node(clients[name], path)  # warm-up: the node loads its engines
        for i in range(args.rounds):
            for name in list(trees) if i % 2 == 0 else list(reversed(trees)):
                wall, work, _step = through_node(clients[name], path)
                runs[name].append((wall, work))
    for name, r in runs.items():
        rep.row(
            f"{name}: diarized long.wav job",
            wall_s=statistics.median(w for w, _ in r),
            work_s=statistics.median(k for _, k in r),
            outside_s=statistics.median(w - k for w, k in r),
        )
    outside = {name: statistics.median(w - k for w, k in r) for name, r in runs.items()}
    walls = [h[0] / b[0] for b, h in zip(runs["base"], runs["head"], strict=True)]
    rep.ratio(
        f"seconds outside the node's work, this checkout / {args.base} (medians)",
        outside["head"] / outside["base"],
        target="(reported; < 1 = less around the engines)",
        ok=None,
    )
    rep.ratio(
        f"wall seconds per job, this checkout / {args.base} (median per round)",
        statistics.median(walls),
        target="(reported; the engines' drift included)",
        ok=None,
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
