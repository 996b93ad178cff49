"""An owner's newest job records, read without reading every record the
owner keeps (bus/newest_records.py), against a real nats-server: the
newest are right, a rare status is found however far back it is, records
rewritten lately are listed once and keep their place, and a listing reads
about its limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import nats
import pytest

from bus import topology
from bus.direct_batch import DirectGets, Stored
from bus.jobstore import JobStore
from bus.sealing import RecordSeal
from bus.settings import Settings
from schemas import names
from schemas.jobs import JobRecord, JobStatus
from testkit.records import noop_record

pytestmark = pytest.mark.timeout(60)
OLD, NEW, OTHERS = 400, 30, 50
LIMIT = 10


class CountingGets(DirectGets):
    """Direct gets that count the stored messages they were answered with."""

    answered = 0

    async def read(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Stored, None]:
        async for stored in super().read(*args, **kwargs):
            self.answered += 1
            yield stored


def _record(owner: str, status: JobStatus = JobStatus.SUCCEEDED) -> JobRecord:
    return noop_record(owner, status=status)


@pytest.fixture
async def client(fresh_nats):
    """A connection and its JetStream context, closed after the test."""
    nc = await nats.connect(fresh_nats.url)
    yield nc, nc.jetstream()
    await nc.close()


async def _store(nc: Any, js: Any, url: str) -> tuple[JobStore, CountingGets]:
    """The gateway's records store on a bucket made as a gateway makes it."""
    await topology.ensure_core(js, Settings(nats_url=url))
    gets = CountingGets(nc, names.kv_stream(names.JOBS_BUCKET))
    return JobStore(topology.jobs_kv(js), RecordSeal.from_secret("s"), js=js, gets=gets), gets


def _newest(recs: list[JobRecord], n: int) -> list[str]:
    return [r.job_id for r in sorted(recs, key=lambda r: r.created_at, reverse=True)[:n]]


async def test_the_newest_records_are_listed_reading_about_the_limit(fresh_nats, client):
    store, gets = await _store(*client, fresh_nats.url)
    # Given an owner's 400 older jobs, every 50th failed, then 30 newer
    # ones, and another owner's after those
    old = [_record("alice", JobStatus.FAILED if i % 50 == 0 else JobStatus.SUCCEEDED) for i in range(OLD)]
    for lo in range(0, OLD, 50):
        await asyncio.gather(*(store.create(r) for r in old[lo : lo + 50]))
    new = [_record("alice") for _ in range(NEW)]
    for r in new:
        await store.create(r)
    for _ in range(OTHERS):
        await store.create(_record("bob"))
    mine = old + new

    # When the newest 10 are listed
    gets.answered = 0
    found = await store.newest("alice", LIMIT)
    # Then they are the newest 10 of the owner's 430, read from about that many
    assert [r.job_id for r in found.records] == _newest(mine, LIMIT)
    assert found.total == OLD + NEW
    # (a window of up to 4× the limit, and a few one-message probes to find it)
    assert gets.answered < 100, f"{gets.answered} messages read for {LIMIT} records"

    # And the newest failures, all among the older jobs, are found
    failed = await store.newest("alice", 3, keep=lambda r: r.status == JobStatus.FAILED)
    assert [r.job_id for r in failed.records] == _newest([r for r in old if r.status == JobStatus.FAILED], 3)
    assert found.complete and failed.complete
    # but not when asked to look through the latest 50 writes only (queue-info's
    # recent failures, a listing by status), and the answer says so
    gets.answered = 0
    within = await store.newest("alice", 3, keep=lambda r: r.status == JobStatus.FAILED, reach=50)
    assert (within.records, within.complete) == ([], False)
    assert gets.answered < OLD // 2, f"{gets.answered} messages read within a reach of 50"
    # while what the latest 50 hold is a complete answer within that reach
    recent = await store.newest("alice", 3, keep=lambda r: r.status == JobStatus.SUCCEEDED, reach=50)
    assert ([r.job_id for r in recent.records], recent.complete) == (_newest(new, 3), True)

    # And old jobs rewritten now (their records move to the stream's end)
    # are listed once each, as rewritten, and not as the newest
    def cancelled(r: JobRecord) -> JobRecord:
        r.status = JobStatus.CANCELLED
        return r

    rewritten = old[1:OLD:8]
    for r in rewritten:
        await store.update("alice", r.job_id, cancelled)
    everything = await store.newest("alice", OLD + NEW)
    assert sorted(r.job_id for r in everything.records) == sorted(r.job_id for r in mine)
    assert {r.job_id for r in everything.records if r.status == JobStatus.CANCELLED} == {r.job_id for r in rewritten}
    gets.answered = 0
    assert [r.job_id for r in (await store.newest("alice", LIMIT)).records] == _newest(mine, LIMIT)
    # (what was written since the newest were created, and less than the
    # last step back's 4× overshoot: not every record)
    assert gets.answered < OLD // 2, f"{gets.answered} messages read for {LIMIT} records"


async def test_an_owner_without_records_lists_none(fresh_nats, client):
    store, _ = await _store(*client, fresh_nats.url)
    await store.create(_record("bob"))
    found = await store.newest("alice", LIMIT)
    assert (found.records, found.total) == ([], 0)


async def test_a_records_bucket_made_before_listings_is_given_direct_gets(fresh_nats, client):
    # Given the records bucket as a deployment made it before listings read it with direct gets
    _, js = client
    await js.create_key_value(bucket=names.JOBS_BUCKET, history=1)
    assert not (await js.stream_info(names.kv_stream(names.JOBS_BUCKET))).config.allow_direct
    # When the gateway starts on it
    store, _ = await _store(*client, fresh_nats.url)
    # Then a listing reads it
    assert (await js.stream_info(names.kv_stream(names.JOBS_BUCKET))).config.allow_direct
    rec = _record("alice")
    await store.create(rec)
    assert [r.job_id for r in (await store.newest("alice", LIMIT)).records] == [rec.job_id]
