"""Job records made as a gateway makes them, for tests and benchmarks that
write records straight into KV `jobs`."""

from __future__ import annotations

from schemas.jobs import JobRecord, new_job_id, now
from schemas.names import Kind, Lane


def noop_record(owner: str, at: float | None = None, **fields: object) -> JobRecord:
    """A no-op job's record on the owner's CPU lane, made at `at` (now);
    `fields` for any other state."""
    t = now() if at is None else at
    return JobRecord.model_validate(
        {
            "job_id": new_job_id(),
            "owner": owner,
            "queue_owner": owner,
            "kind": Kind.NOOP,
            "lane": Lane.CPU,
            "routed_reason": "test",
            "created_at": t,
            "updated_at": t,
            **fields,
        }
    )
