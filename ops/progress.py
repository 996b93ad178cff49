"""Progress bars (rich, on stderr) and the status tables (on stdout) for the CLI."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from ops.client import TERMINAL, ApiError, GatewayClient, GatewayUnreachable

PIPE_WIDTH = 100_000  # wide enough that no cell is cut or folded


def colour_wanted(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set to a
    non-empty value (https://no-color.org: an empty one does not count)."""
    return stream.isatty() and not environ.get("NO_COLOR")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich would exit 1 here; the CLI's one map of errors (ops.exits)
        decides instead, like for a closed pipe anywhere else."""
        self.quiet = True
        raise BrokenPipeError


def console(stream: TextIO, environ: Mapping[str, str] = os.environ) -> Console:
    """A console that decides by itself what the stream is: on a terminal,
    its width and (unless NO_COLOR) colour; in a pipe or file, no escape
    codes at all and no width limit, so scripts get whole job ids and
    columns (rich would otherwise wrap at 80)."""
    tty = stream.isatty()
    colour = colour_wanted(stream, environ)
    return _Console(
        file=stream,
        force_terminal=tty,
        color_system="auto" if colour else None,
        no_color=not colour,
        width=None if tty else PIPE_WIDTH,
        highlight=colour,
    )


err = console(sys.stderr)
out = console(sys.stdout)


def upload(c: GatewayClient, path: Path, **kw: Any) -> dict[str, Any]:
    with Progress(
        TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        return c.submit_file(path, on_read=lambda n: bar.advance(task, n), **kw)


def _describe(job: dict[str, Any]) -> str:
    """`running`, or the phase of a job done in steps (transcribing, diarizing)."""
    doing = job.get("phase") if job["status"] == "running" and job.get("phase") else job["status"]
    return f"{doing} on {job['lane']}" + (f" ({job['node_id']})" if job.get("node_id") else "")


def _follow_events(c: GatewayClient, job_id: str, bar: Progress, task: TaskID) -> dict[str, Any] | None:
    """Live progress from the SSE stream; the final record, or None if the
    stream ended early (the caller then polls)."""
    last: dict[str, Any] | None = None
    for ev in c.events(job_id):
        if ev.event == "state":
            last = ev.data
            bar.update(task, completed=last.get("progress", 0.0), description=_describe(last))
        elif ev.event == "progress" and ev.data.get("progress") is not None:
            done, pages = ev.data.get("media_s_done"), ev.data.get("pages_total")
            media = f", {done:.0f}s of media" if done else ""
            doing = ev.data.get("phase") or "running"
            if pages:
                media = f", page {ev.data.get('pages_done') or 0} of {pages}"
            bar.update(task, completed=ev.data["progress"], description=f"{doing} on {ev.data['lane']}{media}")
        elif ev.event == "started":
            bar.update(task, description=f"running on {ev.data['lane']} ({ev.data['node_id']})")
    return last if last is not None and last["status"] in TERMINAL else None


def wait(c: GatewayClient, job_id: str) -> dict[str, Any]:
    """Follow the job's events (SSE); poll its status if the stream is not
    available (an older gateway, a proxy that buffers) or breaks."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("queued", total=1.0)
        try:
            final = _follow_events(c, job_id, bar, task)
            if final is not None:
                return final
        except (httpx.HTTPError, ApiError, GatewayUnreachable, ValueError) as e:
            err.print(f"[dim]live events unavailable ({e}); polling[/dim]")

        def update(job: dict[str, Any]) -> None:
            bar.update(task, completed=job.get("progress", 0.0), description=_describe(job))

        return c.wait(job_id, on_update=update)


QUEUE_INFO = "/api/v1/auth/queue-info"


def _ago(t: float | None) -> str:
    return f"{time.time() - t:.1f}s ago" if t else "-"


def nodes_table(info: dict[str, Any]) -> Table:
    t = Table(title="live nodes")
    for col in ("node", "owner", "lane", "device", "busy/cap", "done", "models", "serves", "last seen"):
        t.add_column(col, overflow="fold")
    for n in info["live_nodes"]:
        t.add_row(
            n["node_id"],
            n["owner"],
            n["lane"],
            n["device"],
            f"{n['busy']}/{n['capacity']}",
            str(n.get("jobs_done", 0)),
            ",".join(n["models"]),
            ",".join(n.get("features") or {}) or "-",
            _ago(n["last_seen"]),
        )
    return t


NUMERIC = ("pending", "running", "redelivered", "lag", "waiting", "oldest wait")


def _table(title: str, cols: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right" if col in NUMERIC else "left", overflow="fold")
    return t


def queues_table(info: dict[str, Any]) -> Table:
    t = _table(
        f"queues (JetStream, polled {_ago(info.get('as_of'))})",
        ("consumer", "owner", "lane", "priority", "pending", "running", "redelivered", "lag"),
    )
    for q in info["consumers"]:
        t.add_row(
            q["consumer"],
            q["owner"],
            q["lane"],
            q.get("priority", "normal"),
            str(q["pending"]),
            str(q["ack_pending"]),
            str(q["redelivered"]),
            f"{q['lag_s']:.1f}s",
        )
    return t


def waiting_table(info: dict[str, Any]) -> Table:
    """Per owner and priority, over the owner's lanes and pool share; the
    pool's totals in the title (other owners are counted, never named)."""
    pool = info.get("shared_pool") or {}
    title = (
        f"waiting by priority (shared pool: {pool.get('waiting', 0)} waiting, "
        f"{pool.get('running', 0)} running, {pool.get('owners_waiting', 0)} owner(s) with work)"
    )
    t = _table(title, ("owner", "priority", "waiting", "running", "oldest wait"))
    for w in info.get("waiting", []):
        t.add_row(w["owner"], w["priority"], str(w["waiting"]), str(w["running"]), f"{w['oldest_wait_s']:.1f}s")
    return t


def failures_table(info: dict[str, Any]) -> Table:
    t = Table(title="recent failures")
    for col in ("job", "kind", "lane", "node", "code", "message", "when"):
        t.add_column(col, overflow="fold")
    for f in info["recent_failures"]:
        t.add_row(
            f["job_id"],
            f["kind"],
            f["lane"],
            f["node_id"] or "-",
            f["code"] or "-",
            (f["message"] or "")[:60],
            _ago(f["finished_at"]),
        )
    return t


def status_view(c: GatewayClient) -> Group:
    info = c.get(QUEUE_INFO)
    return Group(nodes_table(info), queues_table(info), waiting_table(info), failures_table(info))


def status(c: GatewayClient, *, watch: bool, on: Console = out, every_s: float = 2.0) -> None:
    """One snapshot, or (`--watch`) a live view refreshed every `every_s`."""
    if not watch:
        on.print(status_view(c))
        return
    with Live(status_view(c), console=on, refresh_per_second=1) as live:
        while True:
            time.sleep(every_s)
            live.update(status_view(c))
