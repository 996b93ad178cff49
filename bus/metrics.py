"""Prometheus metrics of the gateway side and of nodes, in one module.

Each class takes the registry it registers into, so tests and `gpubus up`
(gateway and node in one process) never collide on the global registry.
Labels are bounded: lane, kind, status, error code, owner, node; never job
ids or file names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.names import SHARED

if TYPE_CHECKING:
    from bus.lag_monitor import QueueSnapshot
    from schemas.nodes import NodeHeartbeat
    from schemas.processing import ClipCounts

log = logging.getLogger("gpubus.bus.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs_submitted = Counter(
            "gpubus_jobs_submitted_total", "Jobs accepted (202)", ["lane", "kind"], registry=registry
        )
        self.jobs_finished = Counter(
            "gpubus_jobs_finished_total",
            "Jobs that reached a terminal state",
            ["lane", "kind", "status", "code"],
            registry=registry,
        )
        self._fallbacks = Counter(
            "gpubus_fallbacks_total",
            "Jobs moved from the GPU lane to the CPU lane, by why (ack_timeout, node_released, not_started)",
            ["reason", "kind"],
            registry=registry,
        )
        # The same count under its first name, so dashboards and alerts
        # written against it keep working; ops/deploy uses the new one.
        self._fallbacks_alias = Counter(
            "gpubus_jobs_fallback_total",
            "Deprecated alias of gpubus_fallbacks_total (same labels, same values)",
            ["reason", "kind"],
            registry=registry,
        )
        self.jobs_expired = Counter(
            "gpubus_jobs_expired_total",
            "Jobs not finished within their options.ttl_s (also in gpubus_jobs_finished_total)",
            ["lane", "kind"],
            registry=registry,
        )
        self.start_overdue = Gauge(
            "gpubus_gpu_jobs_overdue",
            "GPU-lane jobs past their start timeout that the last scan could not move (bus/start_deadline.py)",
            ["owner"],
            registry=registry,
        )
        self.late_completions = Counter(
            "gpubus_late_completions_total",
            "Terminal events for jobs already terminal (a node finished after fallback)",
            ["lane"],
            registry=registry,
        )
        self.bad_events = Counter("gpubus_bad_events_total", "Undecodable events, dropped", registry=registry)
        self.webhook_deliveries = Counter(
            "gpubus_webhook_deliveries_total",
            "Webhook POST attempts by outcome: delivered, retry (will be tried again), failed (given up), "
            "refused (address not allowed), dropped (a delivery its job record does not confirm)",
            ["outcome"],
            registry=registry,
        )
        self.dropped_events = Counter(
            "gpubus_dropped_events_total",
            "Well-formed events dropped (unknown job, owner over quota, not foldable)",
            ["reason"],
            registry=registry,
        )
        self.bad_heartbeats = Counter(
            "gpubus_bad_heartbeats_total",
            "Node registry entries ignored (body disagrees with key, bad metrics_url)",
            registry=registry,
        )
        self.upload_bytes = Counter(
            "gpubus_upload_bytes_total", "Bytes staged into the object store", registry=registry
        )
        self.queue_wait = Histogram(
            "gpubus_queue_wait_seconds",
            "Submit to start",
            ["lane", "kind", "priority"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.job_duration = Histogram(
            "gpubus_job_duration_seconds",
            "Submit to terminal",
            ["lane", "kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_latency = Histogram(
            "gpubus_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.lag_polls = Counter(
            "gpubus_lag_polls_total",
            "Polls of the JOBS consumer list by the lag monitor",
            ["result"],
            registry=registry,
        )
        self.lag_poll_seconds = Gauge(
            "gpubus_lag_poll_duration_seconds", "How long the last lag poll took", registry=registry
        )

    def fell_back(self, reason: str, kind: str) -> None:
        for counter in (self._fallbacks, self._fallbacks_alias):
            counter.labels(reason=reason, kind=kind).inc()

    def watch_queues(self, snapshot: Callable[[], QueueSnapshot], nodes: Callable[[], Sequence[NodeHeartbeat]]) -> None:
        """Per-consumer queue gauges and live nodes, read at scrape time."""
        self.registry.register(QueueCollector(snapshot, nodes))


CONSUMER_LABELS = ["consumer", "owner", "lane", "priority"]
OWNER_LABELS = ["owner", "priority"]
# (ConsumerLag attribute, metric, help): the counts JetStream's consumer info gives.
CONSUMER_GAUGES = (
    ("pending", "gpubus_consumer_pending_jobs", "Jobs waiting on the consumer, not yet delivered to a node"),
    ("ack_pending", "gpubus_consumer_ack_pending_jobs", "Jobs delivered to a node and not yet acked (running)"),
    ("redelivered", "gpubus_consumer_redelivered_jobs", "Jobs delivered more than once and not yet acked"),
)


class QueueCollector(Collector):
    """Renders the lag monitor's latest JetStream poll at scrape time.

    Counts are as of the last poll (a few seconds old at most); the lag is
    aged to the moment of the scrape, so a stuck queue's lag keeps growing
    between polls instead of moving in steps.
    """

    def __init__(
        self,
        snapshot: Callable[[], QueueSnapshot],
        nodes: Callable[[], Sequence[NodeHeartbeat]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._nodes = nodes
        self._clock = clock

    def _families(self) -> dict[str, GaugeMetricFamily]:
        fams = {key: GaugeMetricFamily(name, doc, labels=CONSUMER_LABELS) for key, name, doc in CONSUMER_GAUGES}
        fams["lag"] = GaugeMetricFamily(
            "gpubus_consumer_lag_seconds",
            "Age of the oldest job on the consumer not yet acked (0 when none)",
            labels=CONSUMER_LABELS,
        )
        fams["waiting"] = GaugeMetricFamily(
            "gpubus_waiting_jobs",
            "Jobs of an owner waiting for a node (own lanes and pool share together), by priority",
            labels=OWNER_LABELS,
        )
        fams["oldest_wait"] = GaugeMetricFamily(
            "gpubus_oldest_wait_seconds",
            "Age of the owner's oldest job of that priority not yet started (0 when none waits)",
            labels=OWNER_LABELS,
        )
        fams["live"] = GaugeMetricFamily("gpubus_live_nodes", "Nodes heartbeating now", labels=["owner", "lane"])
        fams["consumers"] = GaugeMetricFamily(
            "gpubus_lane_consumers",
            "Lane consumers on JOBS, by whether they hold jobs: each one costs the server work per acked job",
            labels=["state"],
        )
        fams["age"] = GaugeMetricFamily(
            "gpubus_queue_info_age_seconds", "Seconds since the last successful poll of JetStream consumer info"
        )
        return fams

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        t = self._clock()
        fam = self._families()
        live: dict[tuple[str, str], int] = {}
        shown_owners: set[str] = set()
        for c in snap.consumers:
            if not c.shown(t):  # idle for long: one series each would make /metrics megabytes at 10,000 owners
                continue
            labels = [c.consumer, c.owner, str(c.lane), str(c.priority)]
            for key, _, _ in CONSUMER_GAUGES:
                fam[key].add_metric(labels, getattr(c, key))
            fam["lag"].add_metric(labels, c.lag_s(t))
            live.setdefault((c.owner, str(c.lane)), 0)  # a queue with no node shows 0, not nothing
            shown_owners.add(c.job_owner or SHARED)
        for w in snap.by_owner():
            if w.owner in shown_owners:
                fam["waiting"].add_metric([w.owner, str(w.priority)], w.waiting)
                fam["oldest_wait"].add_metric([w.owner, str(w.priority)], w.oldest_wait_s(t))
        for n in self._nodes():
            queue = (n.owner, str(n.lane))
            live[queue] = live.get(queue, 0) + 1
        for (owner, lane), count in sorted(live.items()):
            fam["live"].add_metric([owner, lane], count)
        if snap.at is not None:
            busy = sum(1 for c in snap.consumers if c.pending or c.ack_pending)
            fam["consumers"].add_metric(["busy"], busy)
            fam["consumers"].add_metric(["idle"], len(snap.consumers) - busy)
            fam["age"].add_metric([], max(0.0, t - snap.at))
        yield from fam.values()


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry, *, node_id: str, device: str) -> None:
        self.registry = registry
        labels = {"node": node_id, "device": device}
        self._labels = labels
        self.jobs = Counter(
            "gpubus_node_jobs_total", "Jobs processed", ["node", "device", "kind", "status"], registry=registry
        )
        self.job_seconds = Histogram(
            "gpubus_node_job_duration_seconds",
            "Seconds a job spent on the node, from pull to settle",
            ["node", "device", "kind", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.pages = Counter(
            "gpubus_node_pages_total",
            "Pages converted (documents) or recognised (images): rate() is pages/s and images/s",
            ["node", "device", "kind"],
            registry=registry,
        )
        self.media_seconds = Counter(
            "gpubus_node_media_seconds_total", "Seconds of media processed", ["node", "device"], registry=registry
        ).labels(**labels)
        self.processing_seconds = Counter(
            "gpubus_node_processing_seconds_total",
            "Wall seconds spent processing",
            ["node", "device"],
            registry=registry,
        ).labels(**labels)
        self.rtf = Histogram(
            "gpubus_node_real_time_factor",
            "Processing seconds per media second",
            ["node", "device"],
            buckets=RTF_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.in_flight = Gauge(
            "gpubus_node_in_flight", "Jobs being processed", ["node", "device"], registry=registry
        ).labels(**labels)
        self.capacity = Gauge("gpubus_node_capacity", "Jobs at once", ["node", "device"], registry=registry).labels(
            **labels
        )
        self.bad_messages = Counter(
            "gpubus_node_bad_messages_total", "Undecodable job messages, termed", ["node", "device"], registry=registry
        ).labels(**labels)
        stage_labels = ["node", "device", "stage", "engine"]
        self.stage_seconds = Counter(
            "gpubus_node_stage_seconds_total",
            "Wall seconds spent in a step of jobs (stage=diarization), by engine",
            stage_labels,
            registry=registry,
        )
        self.stage_media_seconds = Counter(
            "gpubus_node_stage_media_seconds_total",
            "Seconds of media a step of jobs went through (stage=diarization), by engine",
            stage_labels,
            registry=registry,
        )
        self.stage_rtf = Histogram(
            "gpubus_node_stage_real_time_factor",
            "A step's processing seconds per media second, per job (stage=diarization), by engine",
            stage_labels,
            buckets=RTF_BUCKETS,
            registry=registry,
        )
        self.model_load_seconds = Gauge(
            "gpubus_node_model_load_seconds", "Time to load the model", ["node", "device"], registry=registry
        ).labels(**labels)

    def job_done(self, kind: str, status: str, seconds: float) -> None:
        self.jobs.labels(kind=kind, status=status, **self._labels).inc()
        self.job_seconds.labels(kind=kind, status=status, **self._labels).observe(seconds)

    def pages_done(self, kind: str, pages: int) -> None:
        self.pages.labels(kind=kind, **self._labels).inc(pages)

    def stage_done(self, stage: str, engine: str, processing_s: float, media_s: float) -> None:
        """A timed step of a job (`ResultSummary.stages`: diarization after
        Whisper), by its engine: seconds of work per media second."""
        labels = {"stage": stage, "engine": engine, **self._labels}
        self.stage_seconds.labels(**labels).inc(processing_s)
        self.stage_media_seconds.labels(**labels).inc(media_s)
        if media_s > 0:
            self.stage_rtf.labels(**labels).observe(processing_s / media_s)

    def watch_clips(self, read: Callable[[], ClipCounts | None]) -> None:
        """Short clips gathered across jobs (processors/clip_batcher.py), by
        mode, read at scrape time from the engine's own counters."""
        self.registry.register(ClipCollector(read, self._labels))

    def watch_gpus(self, source: GpuSource) -> None:
        """GPU memory and utilisation, read from `source` at scrape time."""
        errors = Counter(
            "gpubus_node_gpu_read_errors_total",
            "Failed reads of GPU telemetry",
            ["node", "device"],
            registry=self.registry,
        ).labels(**self._labels)
        self.registry.register(GpuCollector(source, self._labels, errors))


class ClipCollector(Collector):
    """`gpubus_node_gathered_clips_total{mode}` and
    `gpubus_node_clip_groups_total{mode}`: their ratio is the mean batch
    (mode batch) or the clips per 30 s window (mode pack), the figure that
    says whether gathering pays. Nothing while the node gathers no clips."""

    def __init__(self, read: Callable[[], ClipCounts | None], labels: dict[str, str]) -> None:
        self._read = read
        self._node, self._device = labels["node"], labels["device"]

    def collect(self) -> Iterator[Metric]:
        counts = self._read()
        if counts is None:
            return
        labels = [self._node, self._device, counts.mode]
        clips = CounterMetricFamily(
            "gpubus_node_gathered_clips",
            "Short clips of different jobs decoded together",
            labels=["node", "device", "mode"],
        )
        clips.add_metric(labels, counts.clips)
        groups = CounterMetricFamily(
            "gpubus_node_clip_groups",
            "Batches (mode batch) or 30 s windows (mode pack) the gathered clips went in",
            labels=["node", "device", "mode"],
        )
        groups.add_metric(labels, counts.groups)
        yield clips
        yield groups


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    memory_used_bytes: float
    memory_total_bytes: float
    utilization_ratio: float | None  # None where the source cannot tell (torch without NVML)


class GpuSource(Protocol):
    """Where GPU telemetry comes from: `name` is nvml, torch or none."""

    name: str

    def read(self) -> list[GpuReading]: ...


GPU_LABELS = ["node", "device", "gpu", "gpu_name"]


class GpuCollector(Collector):
    """Per-GPU gauges, read when Prometheus scrapes (NVML reads are cheap).

    `gpubus_node_gpu_devices{source}` always exists: a node without NVML or
    CUDA reports 0 devices with source="none" rather than nothing, so a
    dashboard can tell "no telemetry here" from "node not scraped". A failed
    read is logged and counted, never a failed scrape.
    """

    def __init__(self, source: GpuSource, labels: dict[str, str], errors: Counter) -> None:
        self._source = source
        self._node, self._device = labels["node"], labels["device"]
        self._errors = errors

    def _families(self) -> dict[str, GaugeMetricFamily]:
        return {
            "devices": GaugeMetricFamily(
                "gpubus_node_gpu_devices",
                "GPUs whose telemetry the node reads (0 with source=none: no NVML/CUDA)",
                labels=["node", "device", "source"],
            ),
            "used": GaugeMetricFamily("gpubus_node_gpu_memory_used_bytes", "GPU memory in use", labels=GPU_LABELS),
            "total": GaugeMetricFamily("gpubus_node_gpu_memory_total_bytes", "GPU memory in all", labels=GPU_LABELS),
            "util": GaugeMetricFamily(
                "gpubus_node_gpu_utilization_ratio", "Share of time the GPU was busy (NVML, 0..1)", labels=GPU_LABELS
            ),
        }

    def describe(self) -> Iterator[Metric]:
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        fam = self._families()
        try:
            readings = self._source.read()
        except Exception as e:  # a GPU fallen off the bus must not break /metrics
            log.warning("GPU telemetry read from %s failed: %s", self._source.name, e)
            self._errors.inc()
            readings = []
        fam["devices"].add_metric([self._node, self._device, self._source.name], len(readings))
        for r in readings:
            labels = [self._node, self._device, str(r.index), r.name]
            fam["used"].add_metric(labels, r.memory_used_bytes)
            fam["total"].add_metric(labels, r.memory_total_bytes)
            if r.utilization_ratio is not None:
                fam["util"].add_metric(labels, r.utilization_ratio)
        yield from fam.values()
