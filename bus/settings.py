"""Typed settings, read once from `GPUBUS_*` environment variables.

Built once at process start and passed in; nothing reads the environment at
import time. Durations are seconds (floats), sizes say their unit.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import INLINE_RESULT_MAX
from schemas.names import Lane
from schemas.processing import ProcessorContext


class GpuMode(StrEnum):
    OFF = "off"  # never route to GPU
    OPTIONAL = "optional"  # per job, by its `gpu` flag
    REQUIRED = "required"  # every GPU-beneficial job asks for GPU


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPUBUS_", extra="ignore")

    # Where things are
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_public_url: str | None = Field(None, description="NATS URL(s) handed to remote nodes; default nats_url")
    gateway_url: str | None = Field(None, description="Gateway base URL, for nodes and the CLI")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("gpubus-data")

    # Identity
    api_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    allow_anonymous: bool = False
    nats_issuer_seed: SecretStr | None = Field(
        None, description="account nkey seed that signs auth callout answers; set = nodes get scoped NATS identities"
    )
    state_key: SecretStr | None = Field(
        None, description="secret the trusted side seals key/job records and job messages with; default: admin_token"
    )
    nats_xkey_seed: SecretStr | None = Field(
        None, description="curve seed (SX...) of the auth callout: the server seals requests to its public key"
    )
    nats_system_url: SecretStr | None = Field(
        None, description="NATS system account URL (with credentials): lets the gateway disconnect revoked nodes"
    )

    # TLS (ops/tls.py makes the files; README "TLS")
    nats_ca_file: Path | None = Field(
        None,
        description="CA of the NATS servers' certificates: the gateway connects with it and hands it to nodes "
        "at bootstrap; set on a node, it overrides what the gateway says",
    )
    tls_ca_file: Path | None = Field(None, description="CA that verifies the gateway's HTTPS certificate (nodes, CLI)")
    gateway_fingerprint: str | None = Field(
        None, description="SHA-256 of the gateway's certificate: trust exactly it (no CA file needed)"
    )
    tls_cert_file: Path | None = Field(None, description="the gateway's HTTPS certificate (PEM, chain first)")
    tls_key_file: Path | None = Field(None, description="the gateway's HTTPS private key")
    allow_insecure: bool = Field(
        False, description="allow plaintext NATS/gateway connections beyond loopback (a trusted private network)"
    )

    # Routing and retry policy (seconds where a duration)
    gpu_mode: GpuMode = GpuMode.OPTIONAL
    gpu_ack_wait: float = Field(30.0, gt=0)
    gpu_max_deliver: int = Field(1, ge=1)
    gpu_max_backlog: int = Field(100, ge=0)
    cpu_ack_wait: float = Field(60.0, gt=0)
    cpu_max_deliver: int = Field(5, ge=1)
    job_deadline: float = Field(600.0, gt=0, description="no progress for this long = hung node")
    node_prefetch: int | None = Field(
        None,
        ge=0,
        le=64,
        description="jobs a node takes ahead of its engine to fetch and decode their inputs (default: the clip batch "
        "on a node that packs short clips, else 1 on GPU, 0 on CPU)",
    )
    inline_result_max: int = Field(
        INLINE_RESULT_MAX,
        ge=0,
        le=INLINE_RESULT_MAX,
        description="results up to this many bytes ride in the succeeded event, larger ones go to the object store",
    )
    gpu_start_timeout: float = Field(
        120.0, gt=0, description="a GPU-lane job no node started in this long moves to the CPU lane"
    )
    start_scan_interval: float = Field(1.0, gt=0, description="how often the gateway looks for GPU jobs past it")
    registry_ttl: float = Field(10.0, gt=0, description="a node unseen this long is not live")
    publish_timeout: float = Field(
        10.0, gt=0, description="how long to retry a publish, or a read of a record, through a NATS outage before 503"
    )
    lag_poll_interval: float = Field(
        5.0, gt=0, description="how often the gateway reads JOBS consumer info for metrics"
    )

    # Nodes
    whisper_model: str | None = Field(
        None, description="model name or path; default: large-v3 on a CUDA GPU node, else the offline tiny.en"
    )
    gpu_batch_size: int = Field(16, ge=0, description="BatchedInferencePipeline batch on CUDA; 0 = sequential")
    node_concurrency: int = Field(1, ge=1)
    clip_batch: int | None = Field(
        None,
        ge=0,
        le=64,
        description="short clips of different jobs that reach the engine together are gathered, up to this many, "
        "and decoded as one batch (one row each) or packed into shared windows (GPUBUS_CLIP_PACK); needs that many "
        "jobs in the engine (GPUBUS_NODE_CONCURRENCY). Default: the node's concurrency on CUDA or with packing, "
        "else 0 (off)",
    )
    clip_pack: bool = Field(
        False,
        description="pack the gathered short clips (up to 15 s) several to one 30 s window, transcribed once and "
        "split back by word times, instead of one batch row each; for the CPU, whose encoder runs a whole window "
        "per clip batched or not. Off by default: a node of concurrency 8 gained 1.15-1.45x with it on this CPU, "
        "and a packed clip's words can differ from the clip alone's (README, clip batching)",
    )
    device: str = "auto"
    compute_type: str | None = None
    drain_timeout: float = Field(30.0, ge=0, description="grace for in-flight jobs when a node is told to stop")
    metrics_port: int = Field(0, ge=0, description="0 = pick a free port")
    enable_noop: bool = Field(False, description="accept the `noop` kind (benchmarks)")
    noop_seconds: float = Field(
        0.0, ge=0, le=60, description="a node's noop jobs each take this long (tests of scheduling order)"
    )

    # Limits and storage
    max_upload_mb: int = Field(1024, gt=0)
    max_active_jobs: int = Field(1000, gt=0, description="queued + running jobs per user before 429")
    max_event_streams: int = Field(20, gt=0, description="concurrent SSE streams per user before 429")
    max_job_listings: int = Field(8, gt=0, description="concurrent job listings per user before 429")
    listing_reach: int = Field(
        2000,
        ge=100,
        description="a listing by status looks among the user's latest this many jobs (about 40 µs of gateway CPU each)",
    )
    replicas: int = Field(1, ge=1, le=5)
    events_max_age_days: float = Field(
        7.0, gt=0, description="node events are kept this long (at least files_ttl_days: small results live in them)"
    )
    files_ttl_days: float = Field(7.0, gt=0, description="staged inputs and results are kept this long")
    records_max_age_days: float = Field(
        30.0,
        gt=0,
        description="a finished job's record is kept this long after it finished (an unfinished one while it is)",
    )
    allow_private_urls: bool = Field(False, description="nodes may download from loopback/private/link-local hosts")
    download_max_mb: int = Field(2048, gt=0, description="largest media a node downloads for a URL job")
    download_timeout: float = Field(900.0, gt=0, description="longest a node spends downloading one URL job")
    docling_artifacts: Path | None = Field(
        None, description="docling's layout model weights on this node (never downloaded); unset: model-free documents"
    )
    # Under the official OpenAI clients' 600 s read time-out, with room for the
    # answer: a client that times out first retries, and a retry is a new request.
    sync_timeout: float = Field(540.0, gt=0, description="longest a synchronous endpoint waits for its job")
    idempotency_ttl: float = Field(
        86_400.0, gt=0, description="how long an Idempotency-Key is remembered (s); a retry within it gets the same job"
    )
    # Completion webhooks (bus/webhook_delivery.py). The receiver's address is
    # checked like a media URL's, against GPUBUS_ALLOW_PRIVATE_URLS.
    webhook_timeout: float = Field(10.0, gt=0, le=120, description="seconds a receiver has to answer one POST")
    webhook_backoff: float = Field(5.0, gt=0, description="seconds before the first retry; doubled each time")
    webhook_backoff_max: float = Field(3600.0, gt=0, description="longest wait between two retries")
    webhook_retry_for: float = Field(
        27 * 3600.0, gt=0, description="seconds a failing delivery is retried for before it is given up"
    )

    @property
    def nats_servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    @property
    def nats_servers_redacted(self) -> list[str]:
        """`nats_servers` fit for a log line: the service identity's
        password in a URL bypasses auth callout, so it is never printed."""
        return [_without_userinfo(u) for u in self.nats_servers]

    @property
    def nats_public_servers(self) -> list[str]:
        """What remote nodes are told to connect to: never the gateway's own
        credentials (they authenticate with their key)."""
        urls = (self.nats_public_url or self.nats_url).split(",")
        return [_without_userinfo(u.strip()) for u in urls if u.strip()]

    @property
    def download_max_bytes(self) -> int:
        return self.download_max_mb * 1024 * 1024

    def clip_batch_for(self, device: str) -> int:
        """How many short clips a node gathers: its concurrency, where it
        batches them (CUDA) or packs them (GPUBUS_CLIP_PACK)."""
        if self.clip_batch is not None:
            return self.clip_batch
        return self.node_concurrency if device == "cuda" or self.clip_pack else 0

    def processor_context(self, node_id: str, lane: Lane, device: str) -> ProcessorContext:
        """The settings values a processor factory gets (built-in or plugin):
        plain values, so processors never depend on this class."""
        return ProcessorContext(
            device=device,
            node_id=node_id,
            lane=lane,
            workers=self.node_concurrency,
            allow_private_urls=self.allow_private_urls,
            download_max_bytes=self.download_max_bytes,
            download_timeout_s=self.download_timeout,
            docling_artifacts=self.docling_artifacts,
        )


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
