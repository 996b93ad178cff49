"""Bus pieces against a real nats-server: topology, object store streaming,
pull requests, per-request KV watches."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from bus import ephemeral, node_permissions, objects, topology
from bus.direct_batch import DirectGets
from bus.errors import BusUnavailable
from bus.job_events import EventReporter, StartNotice
from bus.jobstore import RECHECK_S, JobStore, with_seq
from bus.publisher import JobPublisher
from bus.pulling import Puller
from bus.queueing import PendingNotes, queue_attempt
from bus.record_watch import RecordWatch
from bus.sealing import RecordSeal
from bus.settings import Settings
from schemas import codec, names
from schemas.errors import NotFound, PayloadTooLarge
from schemas.events import EventType, JobEvent
from schemas.jobs import ErrorInfo, JobMessage, JobRecord, JobStatus
from schemas.names import Lane
from testkit.harness import ADMIN_TOKEN
from testkit.records import noop_record

pytestmark = pytest.mark.timeout(60)


async def test_two_gateways_create_topology_at_once(fresh_nats):
    s = Settings(nats_url=fresh_nats.url)
    ncs = [await nats.connect(fresh_nats.url) for _ in range(2)]
    try:
        await asyncio.gather(*(topology.ensure_core(nc.jetstream(), s) for nc in ncs))
        await asyncio.gather(*(topology.ensure_owner(nc.jetstream(), s, "alice") for nc in ncs))
        # ...and again later, with a changed ack_wait: applied as an update
        s2 = Settings(nats_url=fresh_nats.url, gpu_ack_wait=7)
        await topology.ensure_core(ncs[0].jetstream(), s2)
        await topology.ensure_owner(ncs[0].jetstream(), s2, "alice")
        info = await ncs[1].jetstream().consumer_info(names.JOBS_STREAM, "gpu_alice")
        assert info.config.ack_wait == 7 and info.config.max_deliver == 1
        si = await ncs[1].jetstream().stream_info(names.JOBS_STREAM)
        assert si.config.retention == "workqueue" and si.config.duplicate_window >= 120
    finally:
        for nc in ncs:
            await nc.close()


async def test_object_streaming_roundtrip_and_abort(fresh_nats, tmp_path):
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    try:
        await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
        await topology.ensure_owner(js, Settings(nats_url=fresh_nats.url), "bob")
        bucket = names.files_bucket("bob")
        data = os.urandom(3 * objects.CHUNK_BYTES + 12345)
        w = objects.ObjectWriter(js, bucket, "in/j1/a.bin")
        for i in range(0, len(data), 65536):  # arrives in HTTP-sized pieces
            await w.write(data[i : i + 65536])
        await w.commit()
        dest = tmp_path / "a.bin"
        size = await objects.read_to_file(
            js, bucket, "in/j1/a.bin", dest, expected_sha256_hex=hashlib.sha256(data).hexdigest()
        )
        assert size == len(data) and dest.read_bytes() == data
        # the standard object store client reads it too (operators use `nats object get`)
        assert (await (await js.object_store(bucket)).get("in/j1/a.bin")).data == data
        with pytest.raises(objects.DigestMismatch):
            await objects.read_to_file(js, bucket, "in/j1/a.bin", dest, expected_sha256_hex="0" * 64)
        # an aborted or oversize write leaves nothing behind
        w2 = objects.ObjectWriter(js, bucket, "in/j2/b.bin", max_bytes=objects.CHUNK_BYTES)
        with pytest.raises(PayloadTooLarge):
            for _ in range(3):
                await w2.write(os.urandom(objects.CHUNK_BYTES // 2 + 1))
        await w2.abort()
        with pytest.raises(NotFound):
            await objects.object_info(js, bucket, "in/j2/b.bin")
        info = await js.stream_info(f"OBJ_{bucket}", subjects_filter=">")
        assert len(info.state.subjects) == 2  # one object: its chunks and its meta
    finally:
        await nc.close()


@pytest.fixture
async def client(fresh_nats):
    """A connection and its JetStream context, closed after the test."""
    nc = await nats.connect(fresh_nats.url)
    yield nc, nc.jetstream()
    await nc.close()


async def test_puller_takes_what_is_there_at_once_and_keeps_late_messages(client):
    # Given a durable pull consumer with three messages waiting
    nc, js = client
    await js.add_stream(name="PT", subjects=["pt.>"])
    await js.add_consumer("PT", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    for i in range(3):
        await js.publish(f"pt.{i}", b"x")
    puller = await Puller(nc, stream="PT", durable="d", api_prefix=node_permissions.JS_API).open()
    # When a batch of up to 5 is asked for with a long wait
    t0 = time.monotonic()
    batch = await puller.next_batch(max_batch=5, wait_s=10)
    # Then the three come back without waiting out the 10 s
    assert [m.subject for m in batch] == ["pt.0", "pt.1", "pt.2"] and time.monotonic() - t0 < 1.0
    for m in batch:
        await m.ack_sync()
    # And an empty consumer answers None after the wait, no error
    t0 = time.monotonic()
    assert await puller.next_message(0.3) is None and 0.25 < time.monotonic() - t0 < 1.5
    assert await puller.take_available(4) == []
    # And a message published now arrives on the next pull
    await js.publish("pt.late", b"y")
    late = await puller.next_message(5)
    assert late is not None and late.subject == "pt.late" and late.metadata.num_delivered == 1
    await puller.close()


async def test_puller_asks_for_the_rest_only_when_more_are_pending(client):
    # Given a durable pull consumer, and a spy on the pull requests sent to it
    nc, js = client
    await js.add_stream(name="PQ", subjects=["pq.>"])
    await js.add_consumer("PQ", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
    pulls: list[bytes] = []

    async def spy(msg) -> None:
        pulls.append(msg.data)

    await nc.subscribe(f"{node_permissions.JS_API}.CONSUMER.MSG.NEXT.PQ.d", cb=spy)
    puller = await Puller(nc, stream="PQ", durable="d", api_prefix=node_permissions.JS_API).open()
    # When a batch of up to 5 is asked for while one message waits
    await js.publish("pq.0", b"x")
    one = await puller.next_batch(max_batch=5, wait_s=10)
    await nc.flush()
    # Then it comes back after one pull request: its delivery said nothing more was pending
    assert [m.subject for m in one] == ["pq.0"] and len(pulls) == 1, pulls
    await one[0].ack_sync()
    # And with three waiting, the first pull's answer says so and the rest are drained at once
    for i in range(1, 4):
        await js.publish(f"pq.{i}", b"x")
    three = await puller.next_batch(max_batch=5, wait_s=10)
    await nc.flush()
    assert [m.subject for m in three] == ["pq.1", "pq.2", "pq.3"] and len(pulls) == 3, pulls
    await puller.close()


async def test_key_watch_lists_then_follows_and_leaves_no_consumer(client):
    # Given a bucket with two keys of alice, one of bob, and one of alice deleted
    _nc, js = client
    kv = await js.create_key_value(bucket="kwt", history=1)
    for key in ("alice.1", "alice.2", "bob.1", "alice.3"):
        await kv.put(key, key.encode())
    await kv.delete("alice.3")
    # When alice's keys are watched, deletes ignored
    watch = await ephemeral.KeyWatch(js, "kwt", "alice.*", ignore_deletes=True).start()
    seen = []
    async for entry in watch:
        if entry is None:
            break
        seen.append((entry.key, entry.value))
    # Then the current values come, then the marker; later changes follow
    assert sorted(seen) == [("alice.1", b"alice.1"), ("alice.2", b"alice.2")]
    await kv.put("alice.1", b"new")
    entry = await asyncio.wait_for(watch.__anext__(), 5)
    assert (entry.key, entry.value, entry.operation) == ("alice.1", b"new", None)
    # And once stopped, its iteration ends and its consumer is gone at once
    await ephemeral.stop_watch(watch)
    assert [e async for e in watch] == []
    assert await js.consumers_info(names.kv_stream("kwt")) == []


def _record(owner: str) -> JobRecord:
    """A new no-op job's record."""
    return noop_record(owner, 1.0)


LISTINGS = 1500


async def test_every_record_is_listed_every_time_while_others_are_written(client):
    """A KV watch behind a listing took the server's "nothing pending" for
    the end of the values, and that answer could overtake the last values the
    server had delivered (bus/ephemeral.KeyWatch): 3 listings in 1,500 came
    back short. Listings now read with batched direct gets; kept as a check
    that they too are whole while other owners' records are written."""
    nc, js = client
    kv = await js.create_key_value(bucket=names.JOBS_BUCKET, direct=True)
    store = JobStore(kv, RecordSeal(None), js=js, gets=DirectGets(nc, names.kv_stream(names.JOBS_BUCKET)))
    # Given an owner with three jobs, and another owner's jobs being created all along
    records = [_record("alice") for _ in range(3)]
    for rec in records:
        await store.create(rec)
    mine = {rec.job_id for rec in records}
    writing = True

    async def others() -> None:
        while writing:
            await store.create(_record("bob"))

    writer = asyncio.create_task(others())
    # When the owner's jobs are listed again and again
    try:
        short = [i for i in range(LISTINGS) if {r.job_id for r in (await store.newest("alice", 10)).records} != mine]
    finally:
        writing = False
        await writer
    # Then every listing held all three
    assert short == [], f"{len(short)} of {LISTINGS} listings were not whole, first at {short[:5]}"


async def test_updates_of_one_record_in_one_process_go_in_turn_and_lose_no_cas(fresh_nats, client):
    # Given a job record this process created, and a spy on the KV bucket's writes and reads
    nc, js = client
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    jobs = JobStore(await js.key_value(names.JOBS_BUCKET), RecordSeal.from_secret(ADMIN_TOKEN), js=js)
    rec = _record("kl")
    await jobs.create(rec)
    writes: list[str] = []
    reads: list[str] = []

    async def on_write(msg) -> None:
        writes.append(msg.subject)

    async def on_read(msg) -> None:
        reads.append(msg.subject)

    await nc.subscribe(names.kv_subject(names.JOBS_BUCKET, ">"), cb=on_write)
    await nc.subscribe(f"{node_permissions.JS_API}.*.MSG.GET.>", cb=on_read)
    await nc.subscribe(f"{node_permissions.JS_API}.DIRECT.GET.>", cb=on_read)

    def noted(r: JobRecord) -> JobRecord | None:
        return with_seq(r, 1, 7)

    def halfway(r: JobRecord) -> JobRecord:
        r.progress = 0.5
        return r

    # When two updates of it are made at once (a sequence note and a fold, say)
    await asyncio.gather(jobs.update("kl", rec.job_id, noted), jobs.update("kl", rec.job_id, halfway))
    await nc.flush()
    # Then both landed, in one write each, without a lost CAS or a read
    assert len(writes) == 2 and reads == [], (writes, reads)
    final, _ = await jobs.get("kl", rec.job_id)
    assert final.stream_seq == 7 and final.progress == 0.5


async def _queueing(
    fresh_nats, js, owner: str, *, give_up_after_s: float = 5, finished_ttl_s: float | None = None, nc=None
) -> tuple[JobStore, JobPublisher]:
    """The gateway side's job store and publisher, on a server with `owner`'s
    topology (listing, with `nc`)."""
    s = Settings(nats_url=fresh_nats.url)
    await topology.ensure_core(js, s)
    await topology.ensure_owner(js, s, owner)
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    jobs = JobStore(
        topology.jobs_kv(js),
        seal,
        js=js,
        finished_ttl_s=finished_ttl_s,
        gets=None if nc is None else DirectGets(nc, names.kv_stream(names.JOBS_BUCKET)),
    )
    return jobs, JobPublisher(js, seal, give_up_after_s=give_up_after_s, ensure_queue=topology.QueueMaker(js, s))


async def _queued_messages(js, owner: str) -> int:
    infos = [await js.stream_info(names.JOBS_STREAM, subjects_filter=f) for f in names.owner_job_filters(owner)]
    return sum(sum((i.state.subjects or {}).values()) for i in infos)


async def test_a_finished_jobs_record_expires_and_an_unfinished_ones_does_not(fresh_nats, client):
    """Kept for ever, every job's record stayed in nats-server's memory
    (about 1 KB a job, README "Scaling")."""
    # Given records kept 1 s after their job finished, in the bucket the gateway makes
    nc, js = client
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    jobs = JobStore(await js.key_value(names.JOBS_BUCKET), seal, js=js, finished_ttl_s=1.0)
    done, waiting, retried = _record("rt"), _record("rt"), _record("rt")
    for rec in (done, waiting, retried):
        await jobs.create(rec)

    def succeeded(r: JobRecord) -> JobRecord:
        r.status = JobStatus.SUCCEEDED
        return r

    def queued_again(r: JobRecord) -> JobRecord:
        r.status, r.attempts = JobStatus.QUEUED, r.attempts + 1
        return r

    # When one job succeeds, one stays queued, and one succeeds and is retried
    await jobs.update("rt", done.job_id, succeeded)
    await jobs.update("rt", retried.job_id, succeeded)
    await jobs.update("rt", retried.job_id, queued_again)
    assert (await jobs.get("rt", done.job_id))[0].status is JobStatus.SUCCEEDED  # kept until its time is up
    # Then once the time is up the finished one is gone, and the unfinished ones stay
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            await jobs.get("rt", done.job_id)
        except NotFound:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("a finished job's record outlived its time to live")
    await asyncio.sleep(1.5)  # past any time to live the others could have had
    assert (await jobs.get("rt", waiting.job_id))[0].status is JobStatus.QUEUED
    again, _ = await jobs.get("rt", retried.job_id)
    assert again.status is JobStatus.QUEUED and again.attempts == 2


async def test_a_records_bucket_made_before_ttls_is_given_them(fresh_nats, client):
    # Given the records bucket as a deployment made it before per-message TTLs
    nc, js = client
    kv = await js.create_key_value(bucket=names.JOBS_BUCKET, history=1)
    cfg = (await js.stream_info(names.kv_stream(names.JOBS_BUCKET))).config
    cfg.allow_msg_ttl = False
    await js.delete_stream(names.kv_stream(names.JOBS_BUCKET))
    await js.add_stream(cfg)
    assert not (await js.stream_info(names.kv_stream(names.JOBS_BUCKET))).config.allow_msg_ttl
    # When the gateway starts on it
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    # Then the bucket takes a finished record's time to live
    assert (await js.stream_info(names.kv_stream(names.JOBS_BUCKET))).config.allow_msg_ttl
    jobs = JobStore(kv, RecordSeal(None), js=js, finished_ttl_s=60.0)
    rec = _record("old")
    await jobs.create(rec)

    def failed(r: JobRecord) -> JobRecord:
        r.status = JobStatus.FAILED
        return r

    assert (await jobs.update("old", rec.job_id, failed)).status is JobStatus.FAILED


async def test_a_file_bucket_updated_for_a_new_ttl_is_not_updated_again(fresh_nats, client):
    """Only KV buckets are given per-message TTLs: an object store given
    them would differ from what nats-py creates at every later start, and
    be updated each time."""
    # Given an owner's file bucket, then the files' TTL changed (an update in place)
    nc, js = client
    await topology.ensure_files_bucket(js, Settings(nats_url=fresh_nats.url, files_ttl_days=7), "ft")
    changed = Settings(nats_url=fresh_nats.url, files_ttl_days=3)
    await topology.ensure_files_bucket(js, changed, "ft")
    stream = names.object_stream(names.files_bucket("ft"))
    cfg = (await js.stream_info(stream)).config
    assert cfg.max_age == 3 * topology.DAY_S and not cfg.allow_msg_ttl
    # When it is ensured again with the same settings
    updates: list[object] = []
    real_update = js.update_stream

    async def spy(*args, **kw):
        updates.append(args)
        return await real_update(*args, **kw)

    js.update_stream = spy  # type: ignore[method-assign]
    await topology.ensure_files_bucket(js, changed, "ft")
    # Then nothing is updated: the create found the config it asks for
    assert updates == []


async def test_a_submission_done_before_its_sequence_note_is_due_gets_no_note(fresh_nats, client):
    # Given two submissions queued with their sequence notes in the background
    nc, js = client
    jobs, publisher = await _queueing(fresh_nats, js, "nt")
    notes = PendingNotes()
    done, waiting = _record("nt"), _record("nt")
    for rec in (done, waiting):
        await queue_attempt(jobs, publisher, "nt", rec.job_id, 1, rec, notes=notes)

    def succeeded(r: JobRecord) -> JobRecord:
        r.status = JobStatus.SUCCEEDED
        return r

    # (each one's sequence known to this process until its note is written, for a cancel here)
    assert all(notes.seq("nt", rec.job_id, 1) for rec in (done, waiting))
    # When one succeeds before its note is due (as the materializer would write it)
    await jobs.update("nt", done.job_id, succeeded)
    _, revision = await jobs.get("nt", done.job_id)
    await asyncio.gather(*notes.tasks)
    # Then its record is not written again (nothing is left to delete by the sequence)
    after, revision_after = await jobs.get("nt", done.job_id)
    assert revision_after == revision and after.stream_seq is None, after
    assert notes.seq("nt", done.job_id, 1) is None and not notes.tasks
    # And the one still queued has its message noted
    queued, _ = await jobs.get("nt", waiting.job_id)
    assert queued.stream_seq is not None
    assert (
        codec.decode((await js.get_msg(names.JOBS_STREAM, queued.stream_seq)).data, JobMessage).job_id == waiting.job_id
    )


async def test_a_fold_that_comes_while_the_record_is_being_created_starts_from_it(fresh_nats, client):
    """A submission publishes its job while the record is still being
    written (bus/queueing.py), so a fast node's outcome can be folded here
    before the create is answered: the fold waits for it, and neither
    misses the record (a retry 0.25 s later) nor reads it."""
    nc, js = client
    jobs, _ = await _queueing(fresh_nats, js, "cw")
    reads: list[str] = []

    async def on_read(msg) -> None:
        reads.append(msg.subject)

    await nc.subscribe(f"{node_permissions.JS_API}.*.MSG.GET.>", cb=on_read)
    await nc.subscribe(f"{node_permissions.JS_API}.DIRECT.GET.>", cb=on_read)

    def halfway(r: JobRecord) -> JobRecord:
        r.progress = 0.5
        return r

    for _ in range(20):
        rec = _record("cw")
        # Given a record's create sent and not yet answered
        creating = asyncio.ensure_future(jobs.create(rec))
        await asyncio.sleep(0)
        assert not creating.done()
        # When an update of that record comes
        folded = await jobs.update("cw", rec.job_id, halfway)
        await creating
        # Then it is made on the created record, with no read
        assert folded.progress == 0.5
    await nc.flush()
    assert reads == [], reads


async def test_a_new_job_whose_record_cannot_be_written_leaves_no_message(fresh_nats, client):
    """Record and message of a new job are written at once: when the
    record fails, the message stored meanwhile is withdrawn before a node
    can run a job the client was told is not accepted."""
    nc, js = client
    _, publisher = await _queueing(fresh_nats, js, "rf", give_up_after_s=1)
    # Given a job store whose bucket takes no writes (its stream listens elsewhere)
    kv = await js.create_key_value(bucket="jobs-refusing")
    cfg = (await js.stream_info("KV_jobs-refusing")).config
    cfg.subjects = ["elsewhere.>"]
    await js.update_stream(cfg)
    jobs = JobStore(kv, RecordSeal.from_secret(ADMIN_TOKEN), js=js)
    rec = _record("rf")
    # When a new job is queued
    with pytest.raises(BusUnavailable):
        await queue_attempt(jobs, publisher, "rf", rec.job_id, 1, rec)
    # Then its message, which was stored, is gone again
    assert await _queued_messages(js, "rf") == 0


async def test_a_new_job_whose_message_is_refused_leaves_no_record(fresh_nats, client):
    nc, js = client
    jobs, publisher = await _queueing(fresh_nats, js, "mr", give_up_after_s=1, finished_ttl_s=1.0, nc=nc)
    # Given a JOBS stream that takes no job message
    cfg = (await js.stream_info(names.JOBS_STREAM)).config
    cfg.subjects = ["held.>"]
    await js.update_stream(cfg)
    rec = _record("mr")
    # When a new job is queued
    with pytest.raises(BusUnavailable):
        await queue_attempt(jobs, publisher, "mr", rec.job_id, 1, rec)
    # Then the record, which was written, is removed: nothing was accepted
    with pytest.raises(NotFound):
        await jobs.get("mr", rec.job_id)
    # And the removal's marker goes with the records' time to live: the owner's count is 0 again
    assert (await jobs.newest("mr", 10)).total == 1
    deadline = time.monotonic() + 10
    while (await jobs.newest("mr", 10)).total and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await jobs.newest("mr", 10)).total == 0


async def test_a_long_poll_is_answered_by_this_processs_own_terminal_write(fresh_nats, client):
    """The gateway whose materializer finishes a job answers its long polls
    from that write, not when the record watch brings it back through the
    server. The watch here is never started, so only the write can answer
    before the waiter's periodic re-read (RECHECK_S)."""
    nc, js = client
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    jobs = JobStore(await js.key_value(names.JOBS_BUCKET), seal, js=js, finishes=RecordWatch(js, seal))
    rec = _record("lp")
    await jobs.create(rec)
    # Given a client waiting for the job to end
    waiting = asyncio.ensure_future(jobs.wait_terminal("lp", rec.job_id, timeout_s=30))
    await asyncio.sleep(0.2)
    assert not waiting.done()

    def succeeded(r: JobRecord) -> JobRecord:
        r.status = JobStatus.SUCCEEDED
        return r

    # When this process writes it succeeded
    t0 = time.monotonic()
    await jobs.update("lp", rec.job_id, succeeded)
    done = await asyncio.wait_for(waiting, RECHECK_S + 5)
    # Then the waiter has it at once, as written
    assert done.status is JobStatus.SUCCEEDED
    assert time.monotonic() - t0 < RECHECK_S / 2


async def test_a_record_made_elsewhere_is_folded_without_reading_it_back(fresh_nats, client):
    """A record created by another process (a bus client, another gateway)
    reaches this one through its record watch, and the fold of the job's
    outcome starts from it: no KV read first. A heard value that is behind
    costs a CAS miss and a read, never a write."""
    nc, js = client
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    seal = RecordSeal.from_secret(ADMIN_TOKEN)
    kv = await js.key_value(names.JOBS_BUCKET)
    watch = RecordWatch(js, seal)
    here, elsewhere = JobStore(kv, seal, js=js, finishes=watch), JobStore(kv, seal, js=js)
    reads: list[str] = []

    async def read_seen(msg) -> None:
        reads.append(msg.subject)

    spy = await nats.connect(fresh_nats.url)
    stream = names.kv_stream(names.JOBS_BUCKET)
    for subject in (f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}"):
        await spy.subscribe(subject, cb=read_seen)
    await spy.flush()
    await watch.start()
    try:
        # Given a record created elsewhere, which this process's watch heard
        rec = _record("fw")
        await elsewhere.create(rec)
        key = names.job_key("fw", rec.job_id)
        for _ in range(250):
            if watch.latest(key) is not None:
                break
            await asyncio.sleep(0.02)
        assert watch.latest(key) is not None

        def succeeded(r: JobRecord) -> JobRecord:
            r.status = JobStatus.SUCCEEDED
            return r

        # When this process folds the job's outcome into it
        await here.update("fw", rec.job_id, succeeded)
        await spy.flush()
        # Then it wrote on the record as created, and read nothing
        assert reads == []
        assert (await elsewhere.get("fw", rec.job_id))[0].status is JobStatus.SUCCEEDED

        # And when what it heard is behind (the watch gone, another write since)
        await watch.stop()
        await elsewhere.update("fw", rec.job_id, lambda r: r.model_copy(update={"progress": 1.0}))
        reads.clear()
        done = await here.update("fw", rec.job_id, lambda r: r.model_copy(update={"attempts": r.attempts + 1}))
        await spy.flush()
        # Then the CAS missed, it read the record once, and both writes stand
        assert len(reads) == 1, reads
        final, _ = await elsewhere.get("fw", rec.job_id)
        assert final.attempts == done.attempts == rec.attempts + 1 and final.progress == 1.0
        assert final.status is JobStatus.SUCCEEDED
    finally:
        await watch.stop()
        await spy.close()


async def _stored_events(js, owner: str, job_id: str) -> list[JobEvent]:
    subject = names.event_subject(owner, job_id)
    info = await js.stream_info(names.EVENTS_STREAM, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        return [codec.decode((await sub.next_msg(timeout=5)).data, JobEvent) for _ in range(total)]
    finally:
        await sub.unsubscribe()


async def test_start_notice_sends_started_only_for_runs_that_last_or_do_not_succeed(fresh_nats, client):
    # Given the EVENTS stream and a node's reporter
    nc, js = client
    await topology.ensure_core(js, Settings(nats_url=fresh_nats.url))
    events = EventReporter(nc, js, lane=Lane.CPU, node_id="n1", bus_retry_s=5)

    async def run(grace_s: float, lasts_s: float, outcome: EventType, *, progress: bool = False):
        j = _record("sn").to_message()
        notice = StartNotice(events, j, grace_s, on_send=lambda: sent_by.append(j.job_id))
        if progress:
            notice.now()
            events.progress(j, 0.5)
        await asyncio.sleep(lasts_s)
        await notice.before_outcome(announce=outcome is not EventType.SUCCEEDED)
        error = None if outcome is EventType.SUCCEEDED else ErrorInfo(code="X", message="x")
        await events.finished(j, outcome, error=error, started_at=notice.at)
        stored = await _stored_events(js, "sn", j.job_id)
        # (the node logs "started" with the event, and only then)
        assert sent_by.count(j.job_id) == (EventType.STARTED in [e.type for e in stored])
        return notice.at, stored

    sent_by: list[str] = []
    # When a run succeeds within the grace, then only its outcome is stored, naming its start
    at, evs = await run(10.0, 0.0, EventType.SUCCEEDED)
    assert [e.type for e in evs] == [EventType.SUCCEEDED] and evs[0].started_at == at
    # When a run lasts past the grace, then `started` (naming the start, not the send) comes first
    at, evs = await run(0.05, 0.2, EventType.SUCCEEDED)
    assert [e.type for e in evs] == [EventType.STARTED, EventType.SUCCEEDED]
    assert evs[0].started_at == at and evs[0].at > at
    # When a run fails at once, then its `started` still comes before the failure
    _, evs = await run(10.0, 0.0, EventType.FAILED)
    assert [e.type for e in evs] == [EventType.STARTED, EventType.FAILED]
    # When a run shows progress within the grace, then `started` comes before the progress
    _, evs = await run(10.0, 0.1, EventType.SUCCEEDED, progress=True)
    assert [e.type for e in evs] == [EventType.STARTED, EventType.PROGRESS, EventType.SUCCEEDED]
