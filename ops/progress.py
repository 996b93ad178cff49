"""Progress bars and tables for the CLI (rich), on stderr."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
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

from ops.client import TERMINAL, ApiError, GatewayClient

err = Console(stderr=True)


def upload(c: GatewayClient, path: Path, **kw: Any) -> dict[str, Any]:
    with Progress(
        TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        return c.submit_file(path, on_read=lambda n: bar.advance(task, n), **kw)


def _describe(job: dict[str, Any]) -> str:
    return f"{job['status']} on {job['lane']}" + (f" ({job['node_id']})" if job.get("node_id") else "")


def _follow_events(c: GatewayClient, job_id: str, bar: Progress, task: TaskID) -> dict[str, Any] | None:
    """Live progress from the SSE stream; the final record, or None if the
    stream ended early (the caller then polls)."""
    last: dict[str, Any] | None = None
    for ev in c.events(job_id):
        if ev.event == "state":
            last = ev.data
            bar.update(task, completed=last.get("progress", 0.0), description=_describe(last))
        elif ev.event == "progress" and ev.data.get("progress") is not None:
            done = ev.data.get("media_s_done")
            media = f", {done:.0f}s of media" if done else ""
            bar.update(task, completed=ev.data["progress"], description=f"running on {ev.data['lane']}{media}")
        elif ev.event == "started":
            bar.update(task, description=f"running on {ev.data['lane']} ({ev.data['node_id']})")
    return last if last is not None and last["status"] in TERMINAL else None


def wait(c: GatewayClient, job_id: str) -> dict[str, Any]:
    """Follow the job's events (SSE); poll its status if the stream is not
    available (an older gateway, a proxy that buffers) or breaks."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:
        task = bar.add_task("queued", total=1.0)
        try:
            final = _follow_events(c, job_id, bar, task)
            if final is not None:
                return final
        except (httpx.HTTPError, ApiError, ValueError) as e:
            err.print(f"[dim]live events unavailable ({e}); polling[/dim]")

        def update(job: dict[str, Any]) -> None:
            bar.update(task, completed=job.get("progress", 0.0), description=_describe(job))

        return c.wait(job_id, on_update=update)


def status_table(c: GatewayClient) -> Table:
    t = Table(title="gpubus nodes")
    for col in ("node", "owner", "lane", "device", "busy/cap", "models", "last seen"):
        t.add_column(col)
    for n in c.get("/api/v1/status/workers")["nodes"]:
        t.add_row(
            n["node_id"], n["owner"], n["lane"], n["device"], f"{n['busy']}/{n['capacity']}",
            ",".join(n["models"]), f"{time.time() - n['last_seen']:.1f}s ago",
        )
    return t


def status(c: GatewayClient, *, watch: bool) -> None:
    if not watch:
        err.print(status_table(c))
        return
    with Live(status_table(c), console=err, refresh_per_second=1) as live:
        while True:
            time.sleep(2)
            live.update(status_table(c))
