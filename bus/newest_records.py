"""An owner's newest records in a KV bucket, read from the stream's end back
only as far as the answer needs.

A KV bucket of history 1 keeps one message per key, so its stream holds an
owner's records in the order of their last writes. Each record is ranked by
a key its reader derives, a stream sequence no later than the record's last
write: for "newest jobs" the revision that created it (`created_rev`), for
"latest failures" the last write itself. Reading the owner's messages from
sequence S to the end therefore finds every record whose key is S or more;
once `limit` of them are found they are the newest `limit`, however many
the owner keeps before S. Sequences, not clocks, decide it: no assumption
about gateways' and the server's clocks agreeing.

S is found by counts (a one-message direct get counts the owner's
messages after it), stepping back from the end, so a listing reads about
`limit` records where it read every one the owner had (1.5 s of the
gateway's event loop at 30,000 records, bench.job_listing). Records
rewritten after the newest `limit` were created are read too: a listing
reads what was written since its answer began.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from bus.direct_batch import DirectGets, Stored

T = TypeVar("T")

GROWTH = 4  # each step back reads this many times as far
WINDOW_OVER_LIMIT = 4  # a first window holds at most this many times `limit` messages, where it can
WHOLE_READ_UP_TO = 256  # owners with at most this many records are read whole
MAX_PROBES = 32


@dataclass(frozen=True, slots=True)
class Newest(Generic[T]):
    records: list[T]  # newest first, at most `limit`
    total: int  # messages on the owner's keys: records, and removals not yet expired
    complete: bool = True  # False: a `reach` stopped the read before every record that could rank was seen


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
    """What to read: `decode` a stored message (None for a removal or a
    record to skip), keep what `keep` accepts, newest by `rank(record, its
    message's sequence)`, which must not exceed that sequence. `reach`:
    look among the owner's latest this many records (by last write) only
    (None: as far back as the answer needs, every record at worst)."""

    subjects: str
    limit: int
    decode: Callable[[Stored], T | None]
    keep: Callable[[T], bool]
    rank: Callable[[T, int], int]
    reach: int | None = None


class _Found(Generic[T]):
    """Records read so far by subject, the latest read of each winning (a
    record rewritten during the listing is met again at the stream's end)."""

    def __init__(self, q: Query[T]) -> None:
        self._q = q
        self._by_subject: dict[str, tuple[int, T | None]] = {}
        self.highest_seq = 0
        self.read = 0

    def add(self, stored: Stored) -> None:
        self.read += 1
        self.highest_seq = max(self.highest_seq, stored.seq)
        known = self._by_subject.get(stored.subject)
        if known is not None and known[0] > stored.seq:
            return
        rec = self._q.decode(stored)
        self._by_subject[stored.subject] = (stored.seq, rec if rec is not None and self._q.keep(rec) else None)

    def _latest(self) -> list[tuple[int, T | None]]:
        """(sequence, record or None) of what counts: with a `reach`, the
        owner's latest `reach` records read (a step back reads past it)."""
        latest = list(self._by_subject.values())
        if self._q.reach is not None and len(latest) > self._q.reach:
            latest = sorted(latest, key=lambda known: known[0], reverse=True)[: self._q.reach]
        return latest

    def ranked(self) -> list[tuple[int, T]]:
        """(rank, record) of every kept record that counts, highest rank first."""
        out = [(self._q.rank(rec, seq), rec) for seq, rec in self._latest() if rec is not None]
        out.sort(key=lambda ranked: ranked[0], reverse=True)
        return out

    def complete(self, start: int, first_seq: int) -> bool:
        """No record left unread (written before `start`) or set aside by
        the reach (written before the latest `reach`) can outrank the
        answer: each ranks below its own sequence."""
        latest = self._latest()
        if len(latest) == len(self._by_subject):
            return start <= first_seq or self.known_newest(start)
        return self.known_newest(max(start, min(seq for seq, _ in latest)))

    def known_newest(self, start: int) -> bool:
        """`limit` kept records rank at `start` or later: none not yet read
        (all last written before `start`) can outrank them."""
        return sum(1 for rank, _ in self.ranked() if rank >= start) >= self._q.limit


async def newest(gets: DirectGets, q: Query[T]) -> Newest[T]:
    """The newest `q.limit` records `q.keep` accepts, and the owner's total."""
    head = await gets.first(q.subjects)  # the owner's least recently written message
    if head is None:
        return Newest([], 0)
    total = head.pending + 1
    found: _Found[T] = _Found(q)
    start = head.seq
    if total > max(WHOLE_READ_UP_TO, WINDOW_OVER_LIMIT * q.limit):
        start, window = await _first_window(gets, q, head, total)
        for stored in window:
            found.add(stored)
        if not window or window[-1].pending > 0:  # a one-message probe, or a page cut short by its bytes
            async for stored in gets.read_all(q.subjects, seq=window[-1].seq + 1 if window else start):
                found.add(stored)
    else:
        async for stored in gets.read_all(q.subjects, seq=start):
            found.add(stored)
    end = max(found.highest_seq, start) + 1  # a window found empty (removed meanwhile) still steps back
    while start > head.seq and not found.known_newest(start) and (q.reach is None or found.read < q.reach):
        older, start = start, max(head.seq, _step_back(q, found, start, end))
        async for stored in gets.read_all(q.subjects, seq=start, before_seq=older):
            found.add(stored)
        # records rewritten while the older window was read have moved to the end
        async for stored in gets.read_all(q.subjects, seq=found.highest_seq + 1):
            found.add(stored)
    return Newest([rec for _, rec in found.ranked()[: q.limit]], total, found.complete(start, head.seq))


def _step_back(q: Query[T], found: _Found[T], start: int, end: int) -> int:
    """The next window's start: `GROWTH` times as far from the end, or with
    a `reach`, where the owner's density so far puts the rest of the reach,
    in one step (every request costs the server a count over the owner's
    keys, and every record read the gateway about 100 µs)."""
    if q.reach is None or found.read == 0:
        return end - (end - start) * GROWTH
    per_record = (end - start) / found.read  # stream sequences per owner's message, so far
    return start - int((q.reach - found.read) * per_record) - 1


async def _first_window(gets: DirectGets, q: Query[T], head: Stored, total: int) -> tuple[int, list[Stored]]:
    """A sequence from which the owner has `q.limit` to about
    `WINDOW_OVER_LIMIT × q.limit` messages, with the messages read from it.

    Every request answers from a position with the count of the owner's
    messages after it, which costs the server a walk of the owner's keys
    (about 10 ms at 30,000: the listing's largest cost), so the first probe
    is also the window's read: it asks for as many messages as a window
    holds, from where the owner's average density puts `limit` messages,
    and is usually all. Where it misses, one-message probes step back from
    the end, `GROWTH` times as far each time, then halve the gap while a
    window holds too many; the caller reads the window they find."""
    end = await gets.last_seq() + 1
    batch = WINDOW_OVER_LIMIT * q.limit
    many, few = head.seq, end  # from `many`: at least `limit` messages; from `few`: fewer
    step = max(q.limit, (end - head.seq) * q.limit // total)
    probe = max(many, few - step)
    for tries in range(MAX_PROBES):
        window = [stored async for stored in gets.read(q.subjects, seq=probe, batch=1 if tries else batch)]
        n = window[0].pending + 1 if window else 0
        if n > batch:
            many = probe
        elif n >= q.limit or probe == many:
            return probe, window
        else:
            few, step = probe, step * GROWTH
        probe = max(many, few - step) if few - step > many else (many + few) // 2
        if few - many <= 1:
            break
    return many, []
