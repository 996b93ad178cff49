"""The fields of a job state-change log line.

Every state change, in the gateway (queued, and what the materializer folds)
and in nodes (started, and how the attempt ended), logs one line with these
fields passed as `extra=`; the JSON formatter (ops/logs.py) turns them into
keys, so `jq 'select(.job_id == "j…")'` over gateway and node logs follows a
job end to end. Text logs keep the same facts in the message.
"""

from __future__ import annotations

from typing import Any

JOB_STATE = "job_state"


def job_fields(job_id: str, owner: str, lane: str, node_id: str | None, state: str, **more: Any) -> dict[str, Any]:
    return {
        "event": JOB_STATE,
        "job_id": job_id,
        "owner": owner,
        "lane": str(lane),
        "node_id": node_id,
        "state": state,
        **more,
    }
