"""Progress bars and tables for the CLI (rich), on stderr."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from ops.client import GatewayClient

err = Console(stderr=True)


def upload(c: GatewayClient, path: Path, **kw: Any) -> dict[str, Any]:
    with Progress(
        TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        return c.submit_file(path, on_read=lambda n: bar.advance(task, n), **kw)


def wait(c: GatewayClient, job_id: str) -> dict[str, Any]:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:
        task = bar.add_task("queued", total=1.0)

        def update(job: dict[str, Any]) -> None:
            desc = f"{job['status']} on {job['lane']}" + (f" ({job['node_id']})" if job.get("node_id") else "")
            bar.update(task, completed=job.get("progress", 0.0), description=desc)

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
