"""Job records in KV `jobs`, updated only by compare-and-set.

Several gateways may fold events into the same record at once; CAS on the
KV revision makes every update a clean read-modify-write, so "first terminal
state wins" holds without locks.

A finished job's record is written with a time to live (`finished_ttl_s`,
GPUBUS_RECORDS_MAX_AGE_DAYS): the server removes it that long after the job
finished, and a write that takes the job back (a retry) carries none, so an
unfinished job's record lives as long as the job. Kept for ever, records
made nats-server's memory grow by about 1 KB for every job ever run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from bus import ephemeral
from bus.direct_batch import DirectGets, Stored
from bus.errors import CasConflict
from bus.newest_records import Newest, Query, newest
from bus.retry import retrying
from bus.sealing import RecordSeal, SealBroken
from bus.sized_lru import SizedLru
from schemas import codec, names
from schemas.errors import Conflict, NotFound
from schemas.jobs import JOB_ID_RE, JobRecord, JobStatus, now

if TYPE_CHECKING:
    from bus.record_watch import RecordWatch

log = logging.getLogger("gpubus.bus.jobstore")

MAX_CAS_TRIES = 20
KNOWN_RECORDS = 4096
KNOWN_RECORDS_BYTES = 16 * 1024 * 1024  # encoded size: a count alone let a few huge records take the memory
RECHECK_S = 5.0
# What the server answers a compare-and-set that lost (10071, and 10164 for
# the same from a newer server), as nats-py's KeyValue.update reads them.
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
Mutator = Callable[[JobRecord], JobRecord | None]
BeforeTerminal = Callable[[JobRecord], Awaitable[None]]


class KeyLocks:
    """An asyncio lock per key, kept only while somebody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, holders and waiters)

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def created_first(rec: JobRecord, seq: int) -> int:
    """A listing's rank: the revision that created the record (the record's
    own sequence until its first update, which notes it)."""
    return rec.created_rev or seq


def last_written_first(rec: JobRecord, seq: int) -> int:
    """A listing's rank: the record's last write."""
    return seq


class JobStore:
    """`update` starts from the last (record, revision) this process wrote
    or read for the key, when it has one, and reads the key only if the CAS
    then loses: a job's record is written by the API and then by the
    materializer in the same gateway, so the read before every write was a
    round trip that nearly always returned what this process had just
    written. A stale copy costs one failed CAS, never a wrong record.

    Updates of one key in this process go one after another: two at once
    (the submission's sequence note and the materializer's fold of a job
    done in milliseconds) started from the same revision, so one lost its
    CAS and paid a failed write and a read; in turn, the second starts from
    the revision the first wrote. Other processes are still met by CAS.

    What it keeps of a record is its JSON text, not the object: every use
    needs a copy of its own (callers and mutators change records in place),
    and decoding the text again costs a quarter of a deep copy of the
    model, three of which were most of the materializer's own CPU per job."""

    def __init__(
        self,
        kv: KeyValue,
        seal: RecordSeal,
        *,
        js: JetStreamContext,
        finishes: RecordWatch | None = None,
        before_terminal: BeforeTerminal | None = None,
        finished_ttl_s: float | None = None,
        gets: DirectGets | None = None,
    ) -> None:
        """`finished_ttl_s`: how long a finished job's record is kept after
        its terminal write (None: for ever). `gets`: batched direct gets on
        the bucket's stream, for listings (`newest`)."""
        self._kv = kv
        self._gets = gets
        self._finished_ttl_s = finished_ttl_s
        self._js = js  # per-request watches (bus/ephemeral.KeyWatch)
        self._seal = seal
        self._finishes = finishes
        # Called with a record about to be committed terminal, before its
        # CAS (it may add to the record): bus/webhook_outbox.py.
        self._before_terminal = before_terminal
        # key -> (the record's JSON as encode_record made it, revision), sized by those bytes
        self._known: SizedLru[str, tuple[bytes, int]] = SizedLru(
            max_bytes=KNOWN_RECORDS_BYTES, max_entries=KNOWN_RECORDS
        )
        self._writing = KeyLocks()

    def _seal_record(self, key: str, text: bytes) -> bytes:
        return self._seal.seal(_kv_subject(key), text)

    def _decode(self, key: str, value: bytes) -> JobRecord:
        return decode_job_record(self._seal, _kv_subject(key), value)

    def _remember(self, key: str, text: bytes, rev: int, size: int) -> None:
        """Least recently used first out, bounded by entries and by the
        records' encoded bytes."""
        self._known.put(key, (text, rev), size)

    def cached(self, owner: str, job_id: str) -> JobRecord | None:
        """The record as this process last wrote or read it (no NATS round
        trip; it may be stale), or None."""
        known = self._known.get(names.job_key(owner, job_id))
        return _record(known[0]) if known is not None else None

    def knows(self, owner: str, job_id: str) -> bool:
        """This process created or read the record lately (no NATS round trip)."""
        return names.job_key(owner, job_id) in self._known

    @property
    def cached_bytes(self) -> int:
        return self._known.bytes

    async def create(self, rec: JobRecord, *, give_up_after_s: float = 0.0) -> None:
        """Retried through a NATS blip; a "key exists" on a retry is our own
        first try having landed (job ids are fresh and random).

        Holds the key's write lock until the create is answered, taken
        before its first await: a submission publishes the job while its
        record is still being written (bus/queueing.py), and an update of
        the record in this process (the materializer folding the outcome
        of a job done in a millisecond) then waits for the create and
        starts from it, instead of finding no record and trying again in
        0.25 s."""
        key = names.job_key(rec.owner, rec.job_id)
        async with self._writing.held(key):
            await self._create(key, rec, give_up_after_s)

    async def _create(self, key: str, rec: JobRecord, give_up_after_s: float) -> None:
        text = codec.encode_record(rec)
        data = self._seal_record(key, text)
        tries = 0

        async def once() -> None:
            nonlocal tries
            tries += 1
            try:
                rev = await self._kv.create(key, data)
            except KeyWrongLastSequenceError:
                if tries == 1:
                    raise Conflict(f"job {rec.job_id} exists") from None
                return  # our first try landed; its revision is unknown, so nothing is remembered
            self._remember(key, text, rev, len(data))

        await retrying(once, what=f"record {rec.job_id}", give_up_after_s=give_up_after_s)

    async def get(self, owner: str, job_id: str) -> tuple[JobRecord, int]:
        rec, _, revision = await self._read(owner, job_id)
        return rec, revision

    async def _read(self, owner: str, job_id: str) -> tuple[JobRecord, bytes, int]:
        """The record, its JSON text (unsealed) and its revision, remembered."""
        if not JOB_ID_RE.fullmatch(job_id):  # a path parameter: refused before it becomes a KV key
            raise NotFound(f"no job {job_id[:40]!r}")
        try:
            entry = await self._kv.get(names.job_key(owner, job_id))
        except (KeyNotFoundError, NotFoundError):
            raise NotFound(f"no job {job_id}") from None
        if entry.value is None:
            raise NotFound(f"no job {job_id}")
        rec, text = open_job_record(self._seal, _kv_subject(entry.key), entry.value)
        revision = entry.revision or 0  # a KV read always carries its stream sequence
        self._remember(entry.key, text, revision, len(entry.value))
        return rec, text, revision

    async def update(self, owner: str, job_id: str, mutate: Mutator) -> JobRecord:
        """Apply `mutate` to a fresh copy until the CAS wins. `mutate` returns
        None for "no change" and must be pure: it may run more than once."""
        key = names.job_key(owner, job_id)
        async with self._writing.held(key):
            return await self._update(owner, job_id, key, mutate)

    async def _update(self, owner: str, job_id: str, key: str, mutate: Mutator) -> JobRecord:
        """The record as it stood is decoded once per try, into the copy
        `mutate` gets (whether it was terminal is read off that copy first):
        decoding records was the largest item of the gateway's own CPU
        under load."""
        known = self._freshest(key)
        for _ in range(MAX_CAS_TRIES):
            rec: JobRecord | None = None
            if known is not None:
                (text, rev), known = known, None
            else:
                rec, text, rev = await self._read(owner, job_id)
            current = _record(text)  # a copy of its own: what was read stays as read
            was_terminal = current.terminal
            new = mutate(current)
            if new is None:
                if rec is None:  # "no change" is only trusted on a fresh read
                    continue
                return rec
            new.updated_at = now()
            if new.created_rev is None:  # its first update: `rev` is the create's (bus/newest_records.py)
                new.created_rev = rev
            if self._before_terminal is not None and new.terminal and not was_terminal:
                await self._before_terminal(new)
            new_text = codec.encode_record(new)
            data = self._seal_record(key, new_text)
            try:
                new_rev = await self._compare_and_set(
                    key, data, rev, ttl_s=self._finished_ttl_s if new.terminal else None
                )
            except KeyWrongLastSequenceError:
                continue
            self._remember(key, new_text, new_rev, len(data))
            if new.terminal and self._finishes is not None and self._finishes.awaited(key):
                self._finishes.answer_waiters(key, _record(new_text))  # a copy: callers change `new` in place
            return new
        raise CasConflict(f"job {job_id}: {MAX_CAS_TRIES} CAS conflicts in a row")

    async def _compare_and_set(
        self, key: str, data: bytes, last: int, *, ttl_s: float | None, removal: bool = False
    ) -> int:
        """KeyValue.update (or, for a `removal`, KeyValue.delete) as the same
        publish nats-py makes (the expected last revision of the key's
        subject), which can also carry a per-message TTL (nats-server 2.11+;
        nats-py's calls take none). A removal's marker with a TTL goes in
        time, where one without stayed for ever and counted as a record in
        the owner's listing total."""
        headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
        if removal:
            headers[KV_OP] = KV_DEL
        # in whole seconds, the header's unit: nats-server refuses a TTL of 0
        msg_ttl = None if ttl_s is None else max(ttl_s, 1.0)
        try:
            ack = await self._js.publish(_kv_subject(key), data, headers=headers, msg_ttl=msg_ttl)
        except APIError as e:
            if e.err_code in WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=e.description) from None
            raise
        return ack.seq

    def _freshest(self, key: str) -> tuple[bytes, int] | None:
        """(JSON text, revision) to start a compare-and-set from without a
        read: this process's own last write or read of the record, or the
        record watch's last write heard, whichever is later. A record made
        elsewhere (a bus client's, another gateway's) is then folded without
        a KV read first (one request per job fewer: bench.job_requests).
        Either may be behind: the CAS says so and the loop reads."""
        own = self._known.get(key)
        heard = self._finishes.latest(key) if self._finishes is not None else None
        if heard is None or (own is not None and own[1] >= heard[1]):
            return own
        subject = _kv_subject(key)
        try:
            if self._seal.enabled:  # the seal binds the text to this key: no decode needed to trust it
                text = self._seal.open(subject, heard[0])
            else:
                _, text = open_job_record(self._seal, subject, heard[0])
        except (SealBroken, codec.DecodeError):
            return own
        return text, heard[1]

    async def remove_if(self, owner: str, job_id: str, still: Callable[[JobRecord], bool]) -> bool:
        """Delete the record if `still(record)` holds at the revision deleted
        (CAS): undoing a claim never removes a record somebody moved on."""
        key = names.job_key(owner, job_id)
        rec, rev = await self.get(owner, job_id)
        if not still(rec):
            return False
        try:
            await self._compare_and_set(key, b"", rev, ttl_s=self._finished_ttl_s, removal=True)
        except KeyWrongLastSequenceError:
            return False
        self._known.pop(key)
        return True

    async def newest(
        self,
        owner: str,
        limit: int,
        *,
        keep: Callable[[JobRecord], bool] = lambda rec: True,
        rank: Callable[[JobRecord, int], int] = created_first,
        reach: int | None = None,
    ) -> Newest[JobRecord]:
        """The owner's newest `limit` records that `keep` accepts, highest
        `rank` first (by default the newest created), and how many records
        the owner has: about `limit` records read, however many the owner
        keeps (bus/newest_records.py), and no consumer made. `reach`: how
        many of the owner's latest writes to look through at most (None: as
        many as it takes, every record for a `keep` that accepts none)."""
        if self._gets is None:
            raise RuntimeError("this JobStore was made without direct gets (`gets=`): it lists nothing")
        subjects = names.kv_subject(names.JOBS_BUCKET, names.job_key(owner, "*"))
        query = Query(subjects, limit, self._stored, keep, rank, reach)
        return await newest(self._gets, query)

    def _stored(self, stored: Stored) -> JobRecord | None:
        """A listed record, or None for a removal's marker or a record that
        does not open (logged: it is skipped, not fatal to the listing)."""
        if not stored.data or stored.headers.get(KV_OP) in (KV_DEL, KV_PURGE):
            return None
        try:
            return decode_job_record(self._seal, stored.subject, stored.data)
        except codec.DecodeError as e:
            log.error("skipping undecodable job record %s: %s", stored.subject, e)
            return None

    async def watch(self, owner: str, job_id: str) -> AsyncGenerator[JobRecord, None]:
        """The record as it is now, then every new revision of it, as the
        materializer, router and API write them (a KV watch: no polling)."""
        current, _ = await self.get(owner, job_id)  # NotFound before any subscription
        yield current
        watcher = await ephemeral.created(
            ephemeral.KeyWatch(self._js, names.JOBS_BUCKET, names.job_key(owner, job_id)).start(),
            ephemeral.stop_watch,
        )
        try:
            async for entry in watcher:
                if entry is None or entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    continue
                rec = self._decode(entry.key, entry.value)
                if rec.updated_at >= current.updated_at and rec != current:
                    current = rec
                    yield rec
        finally:
            await ephemeral.stop_watch(watcher)

    async def wait_terminal(self, owner: str, job_id: str, timeout_s: float) -> JobRecord:
        """The record once terminal, or as it stands after `timeout_s`."""
        if self._finishes is None:
            return await self._follow_until_terminal(owner, job_id, timeout_s)
        deadline = time.monotonic() + timeout_s
        with self._finishes.waiting(names.job_key(owner, job_id)) as finished:
            while True:
                rec, _ = await self.get(owner, job_id)
                left = deadline - time.monotonic()
                if rec.terminal or left <= 0:
                    return rec
                # The watch answers at once; the re-read every few seconds
                # only bounds the wait if it ever missed an update (a NATS
                # failover between its consumer and the stream).
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(finished), min(left, RECHECK_S))

    async def _follow_until_terminal(self, owner: str, job_id: str, timeout_s: float) -> JobRecord:
        """wait_terminal for a process without a RecordWatch: a watch of its own."""
        last: JobRecord | None = None

        async def follow() -> None:
            nonlocal last
            async with contextlib.aclosing(self.watch(owner, job_id)) as records:
                async for rec in records:
                    last = rec
                    if rec.terminal:
                        return

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(follow(), timeout_s)
        if last is None:
            last, _ = await self.get(owner, job_id)
        return last


def _kv_subject(key: str) -> str:
    return names.kv_subject(names.JOBS_BUCKET, key)


def _record(text: bytes) -> JobRecord:
    """A fresh record from JSON this process encoded or opened itself."""
    return codec.decode_record(text, JobRecord)


def decode_job_record(seal: RecordSeal, subject: str, value: bytes) -> JobRecord:
    """A record only if a gateway sealed it, for the key it is stored under
    (so no record is read as another job's); DecodeError otherwise."""
    return open_job_record(seal, subject, value)[0]


def open_job_record(seal: RecordSeal, subject: str, value: bytes) -> tuple[JobRecord, bytes]:
    """`decode_job_record`, with the record's JSON text as sealed (what the
    job store keeps to make copies from)."""
    try:
        text = seal.open(subject, value)
        rec = codec.decode_record(text, JobRecord)
    except SealBroken as e:
        raise codec.DecodeError(str(e), value) from e
    if subject != _kv_subject(names.job_key(rec.owner, rec.job_id)):
        raise codec.DecodeError(f"{subject} holds the record of {rec.owner}/{rec.job_id}", value)
    return rec, text


def attempt_over(rec: JobRecord, attempt: int) -> bool:
    """The job has moved on from `attempt`, or its node finished it (the
    node acked or termed the message: nothing is left to delete by the
    sequence). A cancelled or expired attempt is not over in this sense:
    its record still notes the message, which the noter withdraws."""
    return rec.attempts != attempt or rec.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def with_seq(rec: JobRecord, attempt: int, seq: int) -> JobRecord | None:
    """Mutator: remember where attempt `attempt` sits in the JOBS stream (so a
    cancel can delete it), unless that attempt is over (`attempt_over`)."""
    if attempt_over(rec, attempt):
        return None
    rec.stream_seq = seq
    return rec
