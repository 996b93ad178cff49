"""Who took a queued GPU attempt: a node that starts it, or the mover that
sends it to the CPU lane because no node started it in time.

Both sides race for the same thing, and only one may win, so they decide it
with one compare-and-set in JetStream: the first message on the attempt's
subject in stream `STARTS` (`starts.<owner>.<job_id>.<attempt>`), published
with `Nats-Expected-Last-Subject-Sequence: 0`. The server stores exactly one
such message per subject; every later one is refused (10071). Neither side
can write job records for this: nodes are untrusted and never write records,
and a record CAS by the mover alone would not stop a node that already
pulled the message. The claim subject is per attempt, so a retry or a
fallback is a new race.

A node that loses (num_delivered 1: no earlier delivery can have claimed)
does no work and leaves the message unsettled: the mover deletes it, and if
the mover died between its claim and the move, the message's ack_wait
expires and the MAX_DELIVERIES advisory sends the job to the CPU lane
(bus/fallback_router.py). A redelivery (num_delivered > 1) lost to the
claim of an earlier delivery of the same attempt, which ran on a node that
then died: it proceeds, as any redelivery does.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from schemas import names

NODE = b"node"
MOVER = b"mover"
WRONG_LAST_SEQUENCE = 10071
EXPECT_FIRST = {"Nats-Expected-Last-Subject-Sequence": "0"}


async def claim(js: JetStreamContext, owner: str, job_id: str, attempt: int, who: bytes) -> bool:
    """True when this call's claim is the attempt's first."""
    subject = names.start_claim_subject(owner, job_id, attempt)
    try:
        await js.publish(subject, who, headers=EXPECT_FIRST)
    except APIError as e:
        if e.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


async def claimant(js: JetStreamContext, owner: str, job_id: str, attempt: int) -> bytes | None:
    """Who holds the attempt's claim (trusted side only: nodes cannot read
    STARTS), or None when nobody claimed it."""
    try:
        raw = await js.get_msg(names.STARTS_STREAM, subject=names.start_claim_subject(owner, job_id, attempt))
    except NotFoundError:
        return None
    return raw.data


async def mover_holds(js: JetStreamContext, owner: str, job_id: str, attempt: int) -> bool:
    """Claim for the mover; a claim an earlier mover made (one that crashed
    before it finished the move, or another gateway) counts as ours: every
    step of the move after it is idempotent."""
    if await claim(js, owner, job_id, attempt, MOVER):
        return True
    return await claimant(js, owner, job_id, attempt) == MOVER


async def node_may_start(js: JetStreamContext, owner: str, job_id: str, attempt: int, num_delivered: int) -> bool:
    """Claim for a node; see the module doc for why a redelivery proceeds."""
    return await claim(js, owner, job_id, attempt, NODE) or num_delivered > 1
