"""Queueing one attempt of a job: the record, then the message.

Submit (attempt 1), retry (the owner's next attempt) and the fallback router
(GPU to CPU) all queue through `queue_attempt`, in one order:

1. claim: write the record of the new attempt (`queued`, no stream sequence)
   by create or compare-and-set, so at most one caller claims an attempt;
2. publish the attempt's message (one `Nats-Msg-Id` per attempt: a publish
   repeated by a second caller or a redelivered advisory is de-duplicated);
3. note its stream sequence on the record (cancel deletes by it); for a
   submission in a task of its own, so the answer does not wait for a
   third synced write (a cancel that comes first is honoured by it), and
   `NOTE_DELAY_S` later: a job over by then (most short ones) needs no
   note, there being nothing left to delete by it, so it gets none.

Why the record first: a node may finish a job milliseconds after the
publish, and the materializer folds its events into the record. Were the
record still the previous attempt (`failed`, for a retry), the outcome would
be counted as a late completion of that one and the new attempt would stay
`queued` for ever; with the record first that race has no room. A new job
has no previous attempt to be mistaken for, so its steps 1 and 2 go at
once (`_create_and_publish`): the answer waits for one synced write's
time, not two, and an outcome that beats its record is folded once the
record lands.

The price is a moment in which the record claims an attempt with no
message (or, for a new job, either write without the other). A write that
fails closes it itself: the claim is undone (the record as it was put
back, a new job's record removed, a new job's stored message withdrawn),
so the caller's error (503) is the whole story, and a later retry, or the
advisory's redelivery, starts clean. Only when the undo fails too (the bus
away for longer than the publish waits) is a `queued` record left without
a message; `never_queued` recognises it once the publish would long have
given up, and retry takes it like a failed job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bus.jobstore import JobStore, attempt_over, with_seq
from bus.publisher import ATTEMPT_TIMEOUT_S, JobPublisher
from bus.retry import retrying
from schemas.errors import Conflict
from schemas.jobs import JobRecord, JobStatus, now

log = logging.getLogger("gpubus.bus.queueing")

Claim = Callable[[JobRecord], JobRecord | None]
UNDO_MARGIN_S = 5.0  # past the publish's own bound, before a claim counts as abandoned
# How long a submission's note waits. Meanwhile a cancel (or TTL) finds no
# sequence and the note withdraws the message (as for one that came before
# it), a repeated queueing of the attempt is de-duplicated by its
# Nats-Msg-Id, and a GPU node's `released` is left to the message's
# ack_wait (the router moves a job only by the sequence on its record):
# far under `never_queued`'s bound, and over the run of a short job, whose
# note (a synced write, on the disk its outcome's writes wait for) it saves.
NOTE_DELAY_S = 0.25


class PendingNotes:
    """This process's submissions whose sequence note is not written yet:
    the tasks (awaited before the services stop) and each one's sequence,
    so a cancel here withdraws a queued message at once instead of when its
    note comes, `NOTE_DELAY_S` later (until then the message would still
    count against the owner's unfinished jobs)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[JobRecord]] = set()
        self._seqs: dict[tuple[str, str, int], int] = {}

    def seq(self, owner: str, job_id: str, attempt: int) -> int | None:
        return self._seqs.get((owner, job_id, attempt))

    def add(self, key: tuple[str, str, int], seq: int, task: asyncio.Task[JobRecord]) -> None:
        self.tasks.add(task)
        self._seqs[key] = seq

        def done(t: asyncio.Task[JobRecord]) -> None:
            self.tasks.discard(t)
            self._seqs.pop(key, None)

        task.add_done_callback(done)


def unpublished(rec: JobRecord, attempt: int) -> bool:
    """The record claims `attempt` and no message of it is noted yet."""
    return rec.attempts == attempt and rec.status is JobStatus.QUEUED and rec.stream_seq is None


def never_queued(rec: JobRecord, *, publish_timeout_s: float, at: float | None = None) -> bool:
    """A claim left behind: queued, no message noted, and older than any
    publish of it could still be trying."""
    age = (now() if at is None else at) - rec.updated_at
    return unpublished(rec, rec.attempts) and age > publish_timeout_s + ATTEMPT_TIMEOUT_S + UNDO_MARGIN_S


async def queue_attempt(
    jobs: JobStore,
    publisher: JobPublisher,
    owner: str,
    job_id: str,
    attempt: int,
    claim: Claim | JobRecord,
    *,
    notes: PendingNotes | None = None,
) -> JobRecord | None:
    """Queue `attempt` of a job. `claim` is a new job's record (created), or
    a pure mutator from the current record to the new attempt's (None: it
    is not this caller's to queue). A claim found made but unpublished (a
    router that crashed half way, a parallel retry) is published again, the
    same message. Returns the queued record, or None when the job is not at
    this attempt (somebody else moved it).

    With `notes`, step 3 runs as a task kept there (the caller awaits them
    before it stops): a submission is answered once its message is stored,
    without a third synced write on its clock."""
    before: JobRecord | None = None
    if isinstance(claim, JobRecord):
        seq = await _create_and_publish(jobs, publisher, claim)
        rec = claim
    else:
        mutate = claim

        def claimed(r: JobRecord) -> JobRecord | None:
            nonlocal before
            as_read = r.model_copy(deep=True)  # the claim may change `r` in place
            new = mutate(r)
            before = as_read if new is not None else None  # as of the revision the CAS wins on
            return new

        rec = await jobs.update(owner, job_id, claimed)
        if not unpublished(rec, attempt):
            return None
        try:
            seq = await publisher.publish(rec.to_message())
        except BaseException:
            if before is not None:
                await _undo(jobs, rec, before)
            raise
    if notes is None:
        return await _note_seq(jobs, publisher, owner, job_id, attempt, seq)
    task = asyncio.create_task(
        _note_seq(jobs, publisher, owner, job_id, attempt, seq, delay_s=NOTE_DELAY_S), name=f"note-{job_id}"
    )
    notes.add((owner, job_id, attempt), seq, task)
    task.add_done_callback(_log_unnoted)
    return rec


async def _create_and_publish(jobs: JobStore, publisher: JobPublisher, rec: JobRecord) -> int:
    """A new job's record and its message, written at once: two synced
    writes to two streams take the time of one, where one after the other
    they were the most of a submission's answer. The record-first order
    matters only for a record that already exists (a retry's `failed` must
    not take the new attempt's outcome); a new job's events that beat its
    record are folded once it lands: in this process the fold waits for
    the create (`JobStore.create` holds the key), elsewhere the
    materializer tries again 0.25 s later (bus/event_drops.py).

    Either write failing undoes the other, so the caller's 503 is the whole
    story: the record goes, and a stored message is withdrawn before a node
    runs it (one that cannot be withdrawn runs with no record: its events
    are dropped as unknown, and the client, told 503, submits again). The
    create starts first, so it holds the record's key before the message
    can reach anybody (tasks start in the order they are made)."""
    create = asyncio.ensure_future(jobs.create(rec, give_up_after_s=publisher.give_up_after_s))
    publish = asyncio.ensure_future(publisher.publish(rec.to_message()))
    try:
        await asyncio.wait((create, publish))
    except BaseException:  # cancelled: neither write may outlive the caller half done
        create.cancel()
        publish.cancel()
        await asyncio.wait((create, publish))
        await _undo_new(jobs, publisher, rec, create, publish)
        raise
    if _landed(create) and _landed(publish):
        return publish.result()
    await _undo_new(jobs, publisher, rec, create, publish)
    error = _error(publish) or _error(create)
    assert error is not None
    raise error


async def _undo_new(
    jobs: JobStore, publisher: JobPublisher, rec: JobRecord, create: asyncio.Future[None], publish: asyncio.Future[int]
) -> None:
    """Best effort, like `_undo`: remove what of a new job did land."""
    if _landed(create):
        await _undo(jobs, rec, None)
    if _landed(publish) and not isinstance(_error(create), Conflict):
        # (A Conflict would mean the id was taken: the stored message may
        # be that job's, de-duplicated by its Nats-Msg-Id. Never withdrawn.)
        try:
            await publisher.withdraw(publish.result())
        except Exception as e:
            log.warning(
                "job %s: message %d not withdrawn after its record failed (%r)", rec.job_id, publish.result(), e
            )


def _error(write: asyncio.Future[Any]) -> BaseException | None:
    """What a finished write raised (None: it landed, was cancelled, or is not done)."""
    return write.exception() if write.done() and not write.cancelled() else None


def _landed(write: asyncio.Future[Any]) -> bool:
    return write.done() and not write.cancelled() and write.exception() is None


def _log_unnoted(task: asyncio.Task[JobRecord]) -> None:
    """The job runs regardless; only a cancel before any node takes it
    cannot delete its message (the node, told too, stops it)."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.warning("%s: stream sequence not noted: %r", task.get_name(), e)


async def _note_seq(
    jobs: JobStore, publisher: JobPublisher, owner: str, job_id: str, attempt: int, seq: int, *, delay_s: float = 0.0
) -> JobRecord:
    """Step 3, after `delay_s`. Retried through a blip: the message is
    stored, and a record left without its sequence would later look like a
    claim never published. Not written for an attempt that is over (as this
    process last saw the record, or as the CAS finds it: `with_seq`). A
    cancel (or a TTL) that came first found no sequence to delete by; the
    message goes now (the node was told too, so it is never run)."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    rec = jobs.cached(owner, job_id)
    if rec is None or not attempt_over(rec, attempt):
        rec = await retrying(
            lambda: jobs.update(owner, job_id, lambda r: with_seq(r, attempt, seq)),
            what=f"note {job_id}",
            give_up_after_s=publisher.give_up_after_s,
        )
    if rec.status in (JobStatus.CANCELLED, JobStatus.EXPIRED) and rec.attempts == attempt:
        await publisher.withdraw(seq)
    return rec


async def _undo(jobs: JobStore, claimed: JobRecord, before: JobRecord | None) -> None:
    """Put the record back as it was before the claim, if it is still the
    claim: a new job's record goes (nothing was accepted), a retried or
    fallen-back one is its previous attempt again. Best effort: if the bus
    is away for this too, `never_queued` covers what is left."""
    attempt = claimed.attempts
    try:
        if before is None:
            await jobs.remove_if(claimed.owner, claimed.job_id, lambda r: unpublished(r, attempt))
        else:
            await jobs.update(
                claimed.owner,
                claimed.job_id,
                lambda r: before.model_copy(deep=True) if unpublished(r, attempt) else None,
            )
    except Exception as e:
        log.warning("job %s: attempt %d not queued and its claim not undone (%r)", claimed.job_id, attempt, e)
