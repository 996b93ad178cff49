"""Prometheus metrics of the gateway side and of nodes, in one module.

Each class takes the registry it registers into, so tests and `gpubus up`
(gateway and node in one process) never collide on the global registry.
Labels are bounded: lane, kind, status, error code, owner, node; never job
ids or file names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.fallbacks = Counter(
            "gpubus_jobs_fallback_total", "Jobs moved from the GPU lane to the CPU lane", ["reason", "kind"], registry=registry
        )
        self.late_completions = Counter(
            "gpubus_late_completions_total",
            "Terminal events for jobs already terminal (a node finished after fallback)",
            ["lane"],
            registry=registry,
        )
        self.bad_events = Counter("gpubus_bad_events_total", "Undecodable events, dropped", registry=registry)
        self.upload_bytes = Counter("gpubus_upload_bytes_total", "Bytes staged into the object store", registry=registry)
        self.queue_wait = Histogram(
            "gpubus_queue_wait_seconds", "Submit to start", ["lane", "kind"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.job_duration = Histogram(
            "gpubus_job_duration_seconds", "Submit to terminal", ["lane", "kind"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.http_latency = Histogram(
            "gpubus_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry, *, node_id: str, device: str) -> None:
        self.registry = registry
        labels = {"node": node_id, "device": device}
        self._labels = labels
        self.jobs = Counter("gpubus_node_jobs_total", "Jobs processed", ["node", "device", "status"], registry=registry)
        self.media_seconds = Counter(
            "gpubus_node_media_seconds_total", "Seconds of media processed", ["node", "device"], registry=registry
        ).labels(**labels)
        self.processing_seconds = Counter(
            "gpubus_node_processing_seconds_total", "Wall seconds spent processing", ["node", "device"], registry=registry
        ).labels(**labels)
        self.rtf = Histogram(
            "gpubus_node_real_time_factor",
            "Processing seconds per media second",
            ["node", "device"],
            buckets=RTF_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.in_flight = Gauge("gpubus_node_in_flight", "Jobs being processed", ["node", "device"], registry=registry).labels(
            **labels
        )
        self.capacity = Gauge("gpubus_node_capacity", "Jobs at once", ["node", "device"], registry=registry).labels(**labels)
        self.bad_messages = Counter(
            "gpubus_node_bad_messages_total", "Undecodable job messages, termed", ["node", "device"], registry=registry
        ).labels(**labels)
        self.model_load_seconds = Gauge(
            "gpubus_node_model_load_seconds", "Time to load the model", ["node", "device"], registry=registry
        ).labels(**labels)

    def job_done(self, status: str) -> None:
        self.jobs.labels(status=status, **self._labels).inc()
