"""The Celery 5 + Redis baseline: the stack gpubus replaces (acks_late, so
a task is acknowledged after it ran, like a gpubus job). The broker URL comes
from BENCH_REDIS_URL, set by the benchmark that starts the worker."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("gpubus_bench", broker=os.environ.get("BENCH_REDIS_URL"), backend=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(job_id: str) -> dict:
    """Returns at once, like gpubus's `noop` kind."""
    return {"job_id": job_id}
