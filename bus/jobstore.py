"""Job records in KV `jobs`, updated only by compare-and-set.

Several gateways may fold events into the same record at once; CAS on the
KV revision makes every update a clean read-modify-write, so "first terminal
state wins" holds without locks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from bus.errors import CasConflict
from bus.retry import retrying
from schemas import codec, names
from schemas.errors import Conflict, NotFound
from schemas.jobs import JobRecord, now

log = logging.getLogger("gpubus.bus.jobstore")

MAX_CAS_TRIES = 20
JOB_ID_RE = re.compile(r"^j[0-9a-f]{32}$")
Mutator = Callable[[JobRecord], JobRecord | None]


class JobStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def create(self, rec: JobRecord, *, give_up_after_s: float = 0.0) -> None:
        """Retried through a NATS blip; a "key exists" on a retry is our own
        first try having landed (job ids are fresh and random)."""
        key, data = names.job_key(rec.owner, rec.job_id), codec.encode_record(rec)
        tries = 0

        async def once() -> None:
            nonlocal tries
            tries += 1
            try:
                await self._kv.create(key, data)
            except KeyWrongLastSequenceError:
                if tries == 1:
                    raise Conflict(f"job {rec.job_id} exists") from None

        await retrying(once, what=f"record {rec.job_id}", give_up_after_s=give_up_after_s)

    async def get(self, owner: str, job_id: str) -> tuple[JobRecord, int]:
        if not JOB_ID_RE.fullmatch(job_id):
            raise NotFound(f"no job {job_id[:40]!r}")
        try:
            entry = await self._kv.get(names.job_key(owner, job_id))
        except (KeyNotFoundError, NotFoundError):
            raise NotFound(f"no job {job_id}") from None
        if entry.value is None:
            raise NotFound(f"no job {job_id}")
        return codec.decode_record(entry.value, JobRecord), entry.revision

    async def update(self, owner: str, job_id: str, mutate: Mutator) -> JobRecord:
        """Apply `mutate` to a fresh copy until the CAS wins. `mutate` returns
        None for "no change" and must be pure: it may run more than once."""
        for _ in range(MAX_CAS_TRIES):
            rec, rev = await self.get(owner, job_id)
            new = mutate(rec.model_copy(deep=True))
            if new is None:
                return rec
            new.updated_at = now()
            try:
                await self._kv.update(names.job_key(owner, job_id), codec.encode_record(new), last=rev)
                return new
            except KeyWrongLastSequenceError:
                continue
        raise CasConflict(f"job {job_id}: {MAX_CAS_TRIES} CAS conflicts in a row")

    async def list(self, owner: str) -> list[JobRecord]:
        """All of one owner's records (a subject-filtered watch, not a scan of
        every user's keys)."""
        watcher = await self._kv.watch(f"{owner}.*", ignore_deletes=True)
        out: list[JobRecord] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    try:
                        out.append(codec.decode_record(entry.value, JobRecord))
                    except codec.DecodeError as e:
                        log.error("skipping undecodable job record %s: %s", entry.key, e)
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return out


def with_seq(rec: JobRecord, attempt: int, seq: int) -> JobRecord | None:
    """Mutator: remember where attempt `attempt` sits in the JOBS stream (so a
    cancel can delete it), unless the job has moved on to another attempt."""
    if rec.attempts != attempt:
        return None
    rec.stream_seq = seq
    return rec
