"""What the materializer does with events it will not fold: how long an
event for a job without a record is waited for, per owner, and how drops are
logged.

A node may publish to `events.<owner>.<anything>`, so a flood of events for
job ids that do not exist costs the shared materializer a KV read each; every
retry multiplies that, and a line per event floods the log (review F6: 40
retries per event turned 2,000 events into 14 s of delay for everyone). So:
few tries, and an owner over its quota of unknown-job events in a window is
"flooding": its events are not waited for, and those of jobs this gateway
does not know are dropped by their subject alone, neither decoded nor looked
up (the look-up was most of the cost, the decoding most of the rest). Drops
are logged as one line per window.

The price is the flooding owner's own: with several gateways, its true events
of jobs another gateway created are dropped too while the window lasts (its
records catch up with the next event after it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("gpubus.bus.materializer")

# Nak delays for an event whose job has no record yet. The gateway writes the
# record just after the job's PubAck, so only a fast node's first event can
# beat it, by milliseconds: two waits cover that, then the event is dropped.
UNKNOWN_JOB_BACKOFF_S = (0.25, 0.75)
UNKNOWN_JOB_QUOTA = 64  # unknown-job events per owner per window before no waiting at all
WINDOW_S = 10.0


class EventDrops:
    """Per-owner counts of unknown-job events and of drops, in windows of
    WINDOW_S; one log line per window says what was dropped."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_start = clock()
        self._unknown: Counter[str] = Counter()
        self._dropped: Counter[tuple[str, str]] = Counter()  # (owner, reason) -> events

    def flooding(self, owner: str) -> bool:
        self._roll()
        return self._unknown[owner] > UNKNOWN_JOB_QUOTA

    def retry_delay(self, owner: str, num_delivered: int, events: int) -> float | None:
        """How long to wait before the next try of `events` events of one
        unknown job, or None to drop them now."""
        self._unknown[owner] += events
        if self.flooding(owner) or num_delivered > len(UNKNOWN_JOB_BACKOFF_S):
            return None
        return UNKNOWN_JOB_BACKOFF_S[num_delivered - 1]

    def dropped(self, owner: str, reason: str, events: int) -> None:
        self._roll()
        self._dropped[(owner, reason)] += events

    def _roll(self) -> None:
        """Start a new window, logging the one that ended (if anything was
        dropped in it)."""
        t = self._clock()
        if t - self._window_start < WINDOW_S:
            return
        self.flush(t - self._window_start)
        self._window_start = t
        self._unknown.clear()

    def flush(self, elapsed_s: float | None = None) -> None:
        if not self._dropped:
            return
        total = sum(self._dropped.values())
        top = ", ".join(f"{owner}/{reason}={n}" for (owner, reason), n in self._dropped.most_common(5))
        elapsed = self._clock() - self._window_start if elapsed_s is None else elapsed_s
        log.warning("dropped %d event(s) in the last %.0fs (owner/reason: %s)", total, elapsed, top)
        self._dropped.clear()
