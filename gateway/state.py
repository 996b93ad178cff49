"""Everything a gateway process holds: one NATS connection and the stores,
publisher, live node view, materializer and metrics built on it."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from bus import topology
from bus.auth_callout import AuthCallout
from bus.connection import close, connect
from bus.fallback_router import FallbackRouter
from bus.jobstore import FinishWatch, JobStore
from bus.keystore import KeyStore
from bus.lag_monitor import LagMonitor
from bus.materializer import Materializer
from bus.metrics import GatewayMetrics
from bus.publisher import JobPublisher
from bus.registry import LiveNodes
from bus.sealing import RecordSeal
from bus.settings import Settings
from bus.tls import nats_context
from gateway.admission import Admission, StreamCap
from schemas import names
from schemas.names import Lane

log = logging.getLogger("gpubus.gateway.state")

BACKLOG_CACHE_S = 1.0


class GatewayState:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.jobs: JobStore
        self.keys: KeyStore
        self.publisher: JobPublisher
        self.nodes: LiveNodes
        self.materializer: Materializer
        self.lag: LagMonitor
        self.ready = False
        self.system_nc: NatsClient | None = None
        self._owners_ready: set[str] = set()
        self._owner_lock = asyncio.Lock()
        self._backlog: dict[str, tuple[float, int]] = {}
        self.admission = Admission(self.active_jobs)
        self.event_streams = StreamCap(settings.max_event_streams)

    async def start(self) -> None:
        s = self.settings
        self.nc = await connect(s.nats_servers, name="gpubus-gateway", on_reconnect=self._reconnected, **self._nats_tls())
        self.js = self.nc.jetstream()
        await topology.ensure_core(self.js, s)
        seal = RecordSeal.from_settings(s)
        self.finishes = FinishWatch(self.js, seal)
        await self.finishes.start()
        self.jobs = JobStore(await self.js.key_value(names.JOBS_BUCKET), seal, js=self.js, finishes=self.finishes)
        self.keys = KeyStore(await self.js.key_value(names.APIKEYS_BUCKET), seal)
        self.publisher = JobPublisher(self.js, seal, give_up_after_s=s.publish_timeout)
        self.nodes = LiveNodes(
            await self.js.key_value(names.NODES_BUCKET), ttl_s=s.registry_ttl, on_bad=self.metrics.bad_heartbeats.inc
        )
        await self.nodes.start()
        self.router = FallbackRouter(
            self.js, self.jobs, self.publisher, self.metrics, seal, nc=self.nc, cpu_queue_for=self.cpu_queue_for
        )
        self.auth_callout: AuthCallout | None = None
        if s.nats_issuer_seed is not None:
            if s.nats_system_url is not None:
                self.system_nc = await connect(
                    [u.strip() for u in s.nats_system_url.get_secret_value().split(",")], name="gpubus-gateway-sys",
                    **self._nats_tls(),
                )
            self.auth_callout = AuthCallout(
                self.nc, self.keys, issuer_seed=s.nats_issuer_seed.get_secret_value(),
                admin_token=lambda: s.admin_token.get_secret_value() if s.admin_token else None,
                system_nc=self.system_nc,
                xkey_seed=s.nats_xkey_seed.get_secret_value() if s.nats_xkey_seed else None,
            )
            await self.auth_callout.start()
        self.materializer = Materializer(self.js, self.jobs, self.metrics, nc=self.nc, on_released=self.router.released)
        await self.materializer.start()
        await self.router.start()
        self.lag = LagMonitor(self.js, interval_s=s.lag_poll_interval, metrics=self.metrics)
        self.metrics.watch_queues(self.lag.snapshot, self.nodes.live)
        await self.lag.start()
        self.ready = True
        log.info("gateway connected to %s; topology ready", ",".join(s.nats_servers_redacted))

    def _nats_tls(self) -> dict:
        """TLS to NATS with the operator's CA (the one nodes are handed)."""
        s = self.settings
        return {"tls": nats_context(s.nats_servers, ca_file=s.nats_ca_file), "allow_insecure": s.allow_insecure}

    def _reconnected(self) -> None:
        if hasattr(self, "nodes"):
            self.nodes.rewatch()
        if hasattr(self, "finishes"):
            self.finishes.restart_soon()

    async def stop(self) -> None:
        self.ready = False
        for part in ("lag", "router", "materializer", "nodes", "auth_callout", "finishes"):
            if getattr(self, part, None) is not None:
                await getattr(self, part).stop()
        if self.system_nc is not None:
            await close(self.system_nc)
        if self.nc:
            await close(self.nc)

    async def ensure_owner(self, owner: str) -> None:
        """Create the owner's bucket and consumers once per process."""
        if owner in self._owners_ready:
            return
        async with self._owner_lock:
            if owner not in self._owners_ready:
                await topology.ensure_owner(self.js, self.settings, owner)
                self._owners_ready.add(owner)

    async def active_jobs(self, owner: str) -> int:
        """Queued + running jobs of an owner: their unacked messages in the
        work-queue stream (two subject-filtered counts, asked side by side;
        no record scan)."""

        async def count(subject: str) -> int:
            info = await self.js.stream_info(names.JOBS_STREAM, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())

        return sum(await asyncio.gather(*(count(s) for s in names.owner_job_filters(owner))))

    def cpu_queue_for(self, owner: str) -> str:
        """The owner's CPU lane if they run a CPU node, else the shared pool."""
        return owner if self.nodes.live(owner=owner, lane=Lane.CPU) else names.SHARED

    async def gpu_backlog(self, owner: str) -> int:
        """Pending + unacked on the owner's GPU lane, cached briefly so a burst
        of submissions does not become a burst of consumer-info requests."""
        cached = self._backlog.get(owner)
        if cached and time.monotonic() - cached[0] < BACKLOG_CACHE_S:
            return cached[1]
        info = await self.js.consumer_info(names.JOBS_STREAM, names.consumer_name(owner, Lane.GPU))
        backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        self._backlog[owner] = (time.monotonic(), backlog)
        return backlog
