"""Job listings per owner are capped (security follow-up to review F8):
each `GET /api/v1/jobs` reads up to a few times its limit of records (every
record of the owner, for a rare status), so an owner runs few at once. The
cap is `GatewayState.job_listing`'s, so the state is driven in process
here, against a real server: two listings can be held mid-read
deterministically, which HTTP timing could not promise."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from bus.metrics import GatewayMetrics
from bus.settings import Settings
from gateway.state import GatewayState
from schemas.errors import RateLimited
from schemas.jobs import JobRecord
from tests.harness import ADMIN_TOKEN

pytestmark = pytest.mark.timeout(60)
CAP = 2


async def _listing(st: GatewayState, owner: str) -> list[JobRecord]:
    with st.job_listing(owner):
        return (await st.jobs.newest(owner, 50)).records


async def test_an_owner_runs_at_most_its_cap_of_job_listings_at_once(fresh_nats):
    registry = CollectorRegistry()
    settings = Settings(nats_url=fresh_nats.url, admin_token=ADMIN_TOKEN, max_job_listings=CAP)
    st = await GatewayState.connect(settings, registry, GatewayMetrics(registry))
    try:
        # Given two listings of one owner, each waiting on its first read
        running = [asyncio.create_task(_listing(st, "alice")) for _ in range(CAP)]
        await asyncio.sleep(0)

        # When a third starts, it is refused with a retry hint (HTTP 429 + Retry-After)
        with pytest.raises(RateLimited) as refused:
            await _listing(st, "alice")
        assert refused.value.retry_after_s > 0 and "job listings" in refused.value.message

        # Then another owner is not affected, and once the two finish a slot is free again
        assert await _listing(st, "bob") == []
        assert await asyncio.gather(*running) == [[]] * CAP
        assert await _listing(st, "alice") == []
    finally:
        await st.close()
