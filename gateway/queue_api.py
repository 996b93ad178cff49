"""What the caller's queues look like, and where Prometheus finds the nodes.

Both read what the gateway already holds (the lag monitor's last poll and
the live node view), so a `gpubus status --watch` per user, or Prometheus
service discovery every few seconds, costs JetStream nothing extra.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter

from bus.jobstore import last_written_first
from bus.lag_monitor import ConsumerLag, OwnerWaiting, QueueSnapshot
from gateway.auth import Principal
from gateway.deps import Admin, Anyone, State
from gateway.state import GatewayState
from schemas import names
from schemas.jobs import JobRecord, JobStatus
from schemas.names import SHARED, Lane
from schemas.nodes import NodeHeartbeat

router = APIRouter(tags=["status"])

RECENT_FAILURES = 10
# ...among the owner's latest record writes: the web page and `gpubus status
# --watch` ask every few seconds, and an owner whose jobs rarely fail would
# otherwise have every record read each time (bus/newest_records.py).
RECENT_FAILURES_AMONG = 500


def consumer_view(c: ConsumerLag, at: float) -> dict[str, Any]:
    return {
        "consumer": c.consumer,
        "owner": c.owner,
        "lane": str(c.lane),
        "priority": str(c.priority),
        "job_owner": c.job_owner,
        "pending": c.pending,
        "ack_pending": c.ack_pending,
        "redelivered": c.redelivered,
        "lag_s": round(c.lag_s(at), 3),
        "oldest_wait_s": round(c.oldest_wait_s(at), 3),
    }


def waiting_view(w: OwnerWaiting, at: float) -> dict[str, Any]:
    return {
        "owner": w.owner,
        "priority": str(w.priority),
        "waiting": w.waiting,
        "running": w.running,
        "oldest_wait_s": round(w.oldest_wait_s(at), 3),
    }


def pool_view(snap: QueueSnapshot) -> dict[str, Any]:
    """The shared pool as a whole, in counts only: other owners' ids are
    theirs (a user sees their own share in `waiting`)."""
    pool = snap.pool
    return {
        "waiting": sum(c.pending for c in pool),
        "running": sum(c.ack_pending for c in pool),
        "owners_waiting": len({c.job_owner for c in pool if c.pending and c.job_owner}),
    }


def node_view(n: NodeHeartbeat) -> dict[str, Any]:
    return n.model_dump(mode="json", exclude={"v", "started_at"})


def failure_view(rec: JobRecord) -> dict[str, Any]:
    err = rec.error
    return {
        "job_id": rec.job_id,
        "kind": str(rec.kind),
        "lane": str(rec.lane),
        "node_id": rec.node_id,
        "code": err.code if err else None,
        "message": err.message if err else None,
        "finished_at": rec.finished_at,
    }


def owner_subjects(owner: str) -> dict[str, Any]:
    """The names an operator types into the `nats` CLI for this owner (a
    queue's consumer exists once a job of its priority was queued)."""
    return {
        "jobs": [names.lane_filter(owner, lane) for lane in Lane],
        "consumers": [names.consumer_name(owner, lane) for lane in Lane],
        "priority_consumers": [q.consumer for lane in Lane for q in names.own_queues(owner, lane)],
        "shared_pool": names.consumer_name(SHARED, Lane.CPU),
        "shared_pool_share": [q.consumer for q in names.pool_shares(owner)],
        "shared_pool_jobs": names.owner_job_filters(owner)[1],
        "events": names.event_subject(owner, ">"),
        "jobs_kv": {"bucket": names.JOBS_BUCKET, "keys": names.job_key(owner, "*")},
        "files": names.files_bucket(owner),
    }


async def recent_failures(st: GatewayState, owner: str) -> list[dict[str, Any]]:
    """The owner's latest failures, read at most RECENT_FAILURES_FRESH_S
    ago and shared by the requests meanwhile (the web page asks every 4 s
    per tab; each read looks through up to 500 records)."""

    async def read() -> list[dict[str, Any]]:
        with st.job_listing(owner):
            found = await st.jobs.newest(
                owner,
                RECENT_FAILURES,
                keep=lambda r: r.status == JobStatus.FAILED,
                rank=last_written_first,
                reach=RECENT_FAILURES_AMONG,
            )
        return [failure_view(r) for r in found.records]

    return await st.recent_failures.get(owner, read)


@router.get("/api/v1/auth/queue-info")
async def queue_info(st: State, p: Anyone) -> dict[str, Any]:
    """The caller's subjects, consumers (with the shared pool their jobs may
    wait in), pending counts, lag, live nodes and recent failures. The admin
    token sees every consumer and node; failures are per user."""
    snap = st.lag.snapshot()
    t = time.time()
    mine = (lambda owner: True) if p.admin else (lambda owner: owner in (p.user_id, SHARED))
    return {
        "user_id": p.user_id,
        "as_of": snap.at,
        "subjects": None if p.admin else owner_subjects(p.user_id),
        "consumers": [consumer_view(c, t) for c in seen_consumers(snap, p)],
        "waiting": owner_waiting(snap, p, t),
        "shared_pool": pool_view(snap),
        "live_nodes": [node_view(n) for n in sorted(st.nodes.live(), key=lambda n: n.node_id) if mine(n.owner)],
        "recent_failures": [] if p.admin else await recent_failures(st, p.user_id),
    }


def owner_waiting(snap: QueueSnapshot, p: Principal, at: float) -> list[dict[str, Any]]:
    return [waiting_view(w, at) for w in (snap.by_owner() if p.admin else snap.waiting_of(p.user_id))]


def seen_consumers(snap: QueueSnapshot, p: Principal) -> list[ConsumerLag]:
    """The admin sees every queue; a user their own lanes, their pool share
    and `cpu_shared` (the pool's jobs of the layout before shares), looked
    up by owner in the snapshot, where a scan per request went through
    20,000 consumers at 10,000 owners (51 ms)."""
    if p.admin:
        return list(snap.consumers)
    return sorted(snap.of_job_owner(p.user_id) + snap.of_job_owner(None), key=lambda c: c.consumer)


@router.get("/api/v1/status/queues")
async def queues(st: State, p: Anyone) -> dict[str, Any]:
    """Waiting and running jobs per owner and priority, with the oldest
    wait (every owner for the admin token, the caller's own otherwise),
    and the shared pool in counts. As of the lag monitor's last poll."""
    snap = st.lag.snapshot()
    t = time.time()
    return {"as_of": snap.at, "owners": owner_waiting(snap, p, t), "shared_pool": pool_view(snap)}


@router.get("/api/v1/status/prometheus-targets")
async def prometheus_targets(st: State, _: Admin) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery (`http_sd_configs`): one target per
    live node that serves metrics, labelled with its queue owner and lane (the
    node id is already a label of every node metric)."""
    out = []
    for n in sorted(st.nodes.live(), key=lambda n: n.node_id):
        if not n.metrics_url:
            continue
        url = urlsplit(n.metrics_url)
        labels = {
            "__metrics_path__": url.path or "/metrics",
            "__scheme__": url.scheme or "http",
            "owner": n.owner,
            "lane": str(n.lane),
        }
        out.append({"targets": [url.netloc], "labels": labels})
    return out
