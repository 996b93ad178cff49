"""Routing and the materializer's fold: pure decisions, every branch."""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from datetime import UTC, datetime

import pytest

from bus.event_drops import UNKNOWN_JOB_BACKOFF_S, UNKNOWN_JOB_QUOTA, WINDOW_S, EventDrops
from bus.jobstore import KNOWN_RECORDS_BYTES, JobStore
from bus.materializer import event_refusal, fold
from bus.publisher import ATTEMPT_TIMEOUT_S
from bus.queueing import UNDO_MARGIN_S, never_queued
from bus.registry import LiveNodes
from bus.result_store import RecentResults
from bus.sealing import RecordSeal
from bus.settings import GpuMode
from bus.sized_lru import ENTRY_OVERHEAD_BYTES
from gateway.routing import Fleet, choose, gpu_wish
from schemas import names
from schemas.events import SEGMENT_TEXT_MAX, EventType, JobEvent, TextSegment, inline_digest
from schemas.jobs import ErrorInfo, JobRecord, JobStatus
from schemas.names import SHARED, Kind, Lane


def backlog(n: int):
    async def ask() -> int:
        return n

    return ask


LIVE = Fleet(owner_gpu_live=True, owner_cpu_live=False, gpu_backlog=backlog(0))


@pytest.mark.parametrize(
    "kind,requested,mode,fleet,lane,queue,reason",
    [
        (Kind.AUDIO, True, GpuMode.OPTIONAL, LIVE, Lane.GPU, "alice", "gpu_requested"),
        (Kind.AUDIO, False, GpuMode.OPTIONAL, LIVE, Lane.CPU, SHARED, "gpu_not_requested"),
        (Kind.AUDIO, False, GpuMode.REQUIRED, LIVE, Lane.GPU, "alice", "gpu_requested"),
        (Kind.AUDIO, True, GpuMode.OFF, LIVE, Lane.CPU, SHARED, "gpu_mode_off"),
        (Kind.NOOP, True, GpuMode.OPTIONAL, LIVE, Lane.CPU, SHARED, "kind_not_gpu_beneficial"),
        (Kind.VIDEO, True, GpuMode.OPTIONAL, Fleet(False, False, backlog(0)), Lane.CPU, SHARED, "no_live_gpu_node"),
        (Kind.VIDEO, True, GpuMode.OPTIONAL, Fleet(False, True, backlog(0)), Lane.CPU, "alice", "no_live_gpu_node"),
        (Kind.AUDIO, True, GpuMode.OPTIONAL, Fleet(True, True, backlog(10)), Lane.CPU, "alice", "gpu_backlog_full"),
    ],
)
async def test_routing_table(kind, requested, mode, fleet, lane, queue, reason):
    route = await choose("alice", kind, requested, mode, fleet, max_backlog=10)
    assert (route.lane, route.queue_owner, route.reason) == (lane, queue, reason)


def _rec(**kw) -> JobRecord:
    base = dict(
        job_id="j" + "0" * 32,
        owner="a",
        queue_owner="a",
        kind=Kind.AUDIO,
        lane=Lane.GPU,
        routed_reason="gpu_requested",
        created_at=1.0,
        updated_at=1.0,
    )
    return JobRecord(**(base | kw))


def _ev(type_: EventType, node: str = "n1", attempt: int = 1, **kw) -> JobEvent:
    return JobEvent(
        type=type_, job_id="j" + "0" * 32, owner="a", attempt=attempt, lane=Lane.GPU, node_id=node, at=5.0, **kw
    )


def test_started_then_succeeded():
    rec = fold(_rec(), _ev(EventType.STARTED))
    assert rec.status == JobStatus.RUNNING and rec.node_id == "n1" and rec.started_at == 5.0
    rec = fold(rec, _ev(EventType.SUCCEEDED, result_object="out/x/1.json"))
    assert rec.status == JobStatus.SUCCEEDED and rec.result_object == "out/x/1.json" and rec.progress == 1.0


def test_the_start_a_node_names_is_the_record_s_start():
    # A run that succeeded within the grace sent no `started`: its outcome says when it began
    quick = fold(_rec(), _ev(EventType.SUCCEEDED, started_at=4.5))
    assert quick.status == JobStatus.SUCCEEDED and quick.started_at == 4.5 and quick.finished_at == 5.0
    # A `started` sent late still names the moment the run began
    assert fold(_rec(), _ev(EventType.STARTED, started_at=4.75)).started_at == 4.75
    # An older node names none: the event's own time
    assert fold(_rec(), _ev(EventType.SUCCEEDED)).started_at == 5.0


def test_recent_results_serve_only_what_the_record_names_and_stay_bounded():
    # Given two results folded lately, within a bound that holds two such entries
    recent = RecentResults(max_bytes=2 * (5 + ENTRY_OVERHEAD_BYTES))
    recent.put(7, "hello")
    recent.put(8, "world")
    named = _rec(result_event_seq=7, result_sha256=inline_digest("hello"))
    # Then a record naming one, with its digest, gets it without a read
    assert recent.for_record(named) == b"hello"
    # And one naming another digest, or no sequence, or one not kept, gets nothing
    assert recent.for_record(named.model_copy(update={"result_sha256": inline_digest("other")})) is None
    assert recent.for_record(_rec()) is None
    assert recent.for_record(_rec(result_event_seq=9, result_sha256=inline_digest("hello"))) is None
    # When a third comes past the bound, then the oldest goes
    recent.put(9, "again")
    assert len(recent) == 2 and recent.for_record(named) is None


def test_recent_results_hold_no_more_memory_than_their_bound():
    # Given the cache of small results, bounded at 1 MiB
    bound = 1024 * 1024
    gc.collect()
    tracemalloc.start()
    try:
        recent = RecentResults(max_bytes=bound)
        before = tracemalloc.get_traced_memory()[0]
        # When far more no-op results than fit are folded (27 bytes of text each)
        for seq in range(10_000_000, 10_100_000):
            recent.put(seq, json.dumps({"kind": "noop", "echo": seq % 10}))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Then what they hold, keys and entries included, stays within the bound
    # (counted by their text alone they held 8 times as much)
    assert 0 < held <= bound, (held, len(recent))


def test_first_terminal_wins_and_late_completion_is_counted():
    done = fold(_rec(attempts=2), _ev(EventType.SUCCEEDED, node="cpu1", attempt=2, result_object="out/x/2.json"))
    late = fold(done.model_copy(), _ev(EventType.SUCCEEDED, node="gpu1", attempt=1, result_object="out/x/1.json"))
    assert late.status == JobStatus.SUCCEEDED and late.result_object == "out/x/2.json" and late.node_id == "cpu1"
    assert late.late_completions == 1


def test_replayed_terminal_event_changes_nothing():
    done = fold(_rec(), _ev(EventType.FAILED, error=ErrorInfo(code="DECODE_FAILED", message="x")))
    assert fold(done.model_copy(), _ev(EventType.FAILED, error=ErrorInfo(code="DECODE_FAILED", message="x"))) is None


def test_terminal_state_never_goes_back():
    done = fold(_rec(), _ev(EventType.SUCCEEDED))
    assert fold(done.model_copy(), _ev(EventType.STARTED)) is None
    assert fold(done.model_copy(), _ev(EventType.PROGRESS, progress=0.5)) is None


def test_a_text_segment_never_changes_a_record():
    seg = TextSegment(index=0, start=0.0, end=2.0, text=" Hello.")
    assert fold(_rec(), _ev(EventType.SEGMENT, segment=seg)) is None  # not even queued -> running
    running = fold(_rec(), _ev(EventType.STARTED))
    assert fold(running.model_copy(), _ev(EventType.SEGMENT, segment=seg)) is None
    done = fold(_rec(), _ev(EventType.SUCCEEDED))
    assert fold(done.model_copy(), _ev(EventType.SEGMENT, segment=seg, node="late")) is None


def test_segment_text_is_bounded():
    seg = TextSegment.of(3, 1.0, 2.0, "x" * (SEGMENT_TEXT_MAX + 10))
    assert len(seg.text) == SEGMENT_TEXT_MAX and seg.index == 3


def test_progress_of_an_abandoned_attempt_is_ignored():
    assert fold(_rec(attempts=2), _ev(EventType.PROGRESS, attempt=1, progress=0.9)) is None


def test_progress_out_of_order_never_goes_backwards():
    rec = fold(_rec(), _ev(EventType.PROGRESS, progress=0.6))
    rec = fold(rec, _ev(EventType.PROGRESS, progress=0.3))
    assert rec.progress == 0.6 and rec.status == JobStatus.RUNNING


def test_result_object_must_be_the_attempts_own():
    job_id = "j" + "0" * 32
    subject = names.event_subject("a", job_id)
    assert (
        event_refusal(subject, _ev(EventType.SUCCEEDED, attempt=2, result_object=names.result_object(job_id, 2)))
        is None
    )
    for elsewhere in (names.COOKIES_OBJECT, names.result_object(job_id, 1), "in/x/../../auth/cookies.txt"):
        assert event_refusal(subject, _ev(EventType.SUCCEEDED, attempt=2, result_object=elsewhere)) is not None
    assert event_refusal(names.event_subject("b", job_id), _ev(EventType.STARTED)) is not None


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_unknown_job_events_get_a_few_short_tries(caplog):
    drops = EventDrops(clock=_Clock())
    delays = [drops.retry_delay("a", n, 1) for n in (1, 2, 3)]
    assert delays[:2] == list(UNKNOWN_JOB_BACKOFF_S) and delays[2] is None
    assert not drops.flooding("a")


def test_an_owner_over_its_unknown_job_quota_floods_until_the_window_ends(caplog):
    clock = _Clock()
    drops = EventDrops(clock=clock)
    for _ in range(UNKNOWN_JOB_QUOTA + 1):
        drops.retry_delay("a", 1, 1)
        drops.dropped("a", "unknown_job", 1)
    assert drops.flooding("a") and not drops.flooding("b")
    assert drops.retry_delay("a", 1, 1) is None
    assert not caplog.records  # nothing logged per event
    clock.t += WINDOW_S
    assert not drops.flooding("a")
    [line] = [r.getMessage() for r in caplog.records]
    assert f"dropped {UNKNOWN_JOB_QUOTA + 1} event(s)" in line and "a/unknown_job" in line


def test_known_records_are_bounded_by_bytes():
    store = JobStore(kv=None, seal=RecordSeal(None), js=None)  # type: ignore[arg-type]  (only the in-memory cache is used)
    big = KNOWN_RECORDS_BYTES // 4 - ENTRY_OVERHEAD_BYTES  # four such entries fill it
    for i in range(10):
        store._remember(f"a.j{i}", _rec(), i, big)
    assert store.cached_bytes <= KNOWN_RECORDS_BYTES and store.knows("a", "j9") and not store.knows("a", "j0")
    store._remember("a.j9", _rec(), 11, 10)  # a rewrite replaces its own bytes
    assert store.cached_bytes == 3 * (big + ENTRY_OVERHEAD_BYTES) + 10 + ENTRY_OVERHEAD_BYTES


def _hb(owner="alice", lane="cpu", node_id="n1", **kw) -> bytes:
    base = dict(
        node_id=node_id,
        owner=owner,
        lane=lane,
        device="cpu",
        kinds=["audio"],
        models=["tiny.en"],
        capacity=1,
        busy=0,
        last_seen=time.time(),
        started_at=time.time(),
        metrics_url="http://127.0.0.1:9100/metrics",
    )
    return json.dumps(base | kw).encode()


def test_registry_believes_the_key_not_the_body():
    bad: list[int] = []
    nodes = LiveNodes(kv=None, ttl_s=3, on_bad=lambda: bad.append(1))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    nodes._apply("alice.cpu.n1", None, _hb(), now)
    nodes._apply("alice.cpu.spoof", None, _hb(owner="bob", node_id="spoof"), now)
    nodes._apply("alice.gpu.n2", None, _hb(lane="cpu", node_id="n2"), now)
    nodes._apply("alice.cpu.n3", None, _hb(node_id="other"), now)
    assert [n.node_id for n in nodes.live()] == ["n1"] and not nodes.live(owner="bob") and len(bad) == 3


def test_registry_ages_by_the_servers_time_and_clamps_the_future():
    nodes = LiveNodes(kv=None, ttl_s=3)  # type: ignore[arg-type]
    long_ago = datetime.fromtimestamp(time.time() - 10, UTC)
    nodes._apply("alice.cpu.old", None, _hb(node_id="old", last_seen=time.time() + 3e8), long_ago)
    nodes._apply("alice.cpu.new", None, _hb(node_id="new", last_seen=time.time() + 3e8), datetime.now(UTC))
    [n] = nodes.live()
    assert n.node_id == "new" and n.last_seen <= time.time()


def test_registry_drops_a_metrics_url_prometheus_must_not_scrape():
    bad: list[int] = []
    nodes = LiveNodes(kv=None, ttl_s=3, on_bad=lambda: bad.append(1))  # type: ignore[arg-type]
    nodes._apply("alice.cpu.n1", None, _hb(metrics_url="http://u:p@10.0.0.1:80/"), datetime.now(UTC))
    [n] = nodes.live()
    assert n.metrics_url is None and bad == [1]


async def test_routing_asks_the_gpu_backlog_only_when_the_gpu_lane_is_a_candidate():
    asked: list[int] = []

    async def counted() -> int:
        asked.append(1)
        return 0

    # Given no GPU wish, or no live GPU node: the backlog is not asked
    await choose("alice", Kind.AUDIO, False, GpuMode.OPTIONAL, Fleet(True, False, counted), max_backlog=10)
    await choose("alice", Kind.AUDIO, True, GpuMode.OPTIONAL, Fleet(False, False, counted), max_backlog=10)
    assert asked == []
    # When the GPU lane is a candidate, it is asked once
    await choose("alice", Kind.AUDIO, True, GpuMode.OPTIONAL, Fleet(True, False, counted), max_backlog=10)
    assert asked == [1]


@pytest.mark.parametrize(
    "lane,requested,fallback,wish",
    [
        (Lane.CPU, True, False, True),
        (Lane.GPU, False, False, False),
        (Lane.GPU, None, False, True),
        (Lane.CPU, None, True, True),
        (Lane.CPU, None, False, False),
    ],
)
def test_a_retry_is_routed_by_the_users_wish_not_the_lane(lane, requested, fallback, wish):
    from schemas.jobs import Fallback

    rec = _rec(
        lane=lane,
        gpu_requested=requested,
        fallback=Fallback(from_lane=Lane.GPU, reason="ack_timeout", at=1.0) if fallback else None,
    )
    assert gpu_wish(rec) is wish


def test_a_claim_counts_as_never_queued_only_after_any_publish_of_it_gave_up():
    claim = _rec(status=JobStatus.QUEUED, stream_seq=None, updated_at=100.0)
    bound = 10 + ATTEMPT_TIMEOUT_S + UNDO_MARGIN_S
    assert not never_queued(claim, publish_timeout_s=10, at=100.0 + bound - 0.1)
    assert never_queued(claim, publish_timeout_s=10, at=100.0 + bound + 0.1)
    assert not never_queued(claim.model_copy(update={"stream_seq": 7}), publish_timeout_s=10, at=1e9)
    assert not never_queued(claim.model_copy(update={"status": JobStatus.RUNNING}), publish_timeout_s=10, at=1e9)


def test_records_and_events_refuse_what_is_not_a_job_id():
    from pydantic import ValidationError

    for bad in ("x", "j" + "0" * 31, "J" + "0" * 32, "j" + "0" * 32 + ".x", "/".join(["..", "j" + "0" * 32])):
        with pytest.raises(ValidationError):
            _rec(job_id=bad)
        with pytest.raises(ValidationError):
            JobEvent.model_validate(_ev(EventType.STARTED).model_dump() | {"job_id": bad})


def test_an_inline_result_is_located_by_its_event_and_digest():
    # Given a succeeded event carrying its result, folded from stream sequence 41
    text = '{"text": "hello"}'
    rec = fold(_rec(), _ev(EventType.SUCCEEDED, result_inline=text), 41)
    # Then the record names that event and the text's digest, and no object
    assert (rec.result_event_seq, rec.result_sha256, rec.result_object) == (41, inline_digest(text), None)
    # ...and a retry's next result by object clears both
    again = fold(_rec(attempts=2), _ev(EventType.SUCCEEDED, attempt=2, result_object="out/x/2.json"), 42)
    assert again.result_event_seq is None and again.result_sha256 is None


def test_an_inline_result_belongs_only_to_a_succeeded_event_without_an_object():
    job_id = "j" + "0" * 32
    subject = names.event_subject("a", job_id)
    assert event_refusal(subject, _ev(EventType.SUCCEEDED, result_inline="{}")) is None
    assert event_refusal(subject, _ev(EventType.FAILED, result_inline="{}")) is not None
    both = _ev(EventType.SUCCEEDED, result_inline="{}", result_object=names.result_object(job_id, 1))
    assert event_refusal(subject, both) is not None
