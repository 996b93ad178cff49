"""Everything a gateway process holds: one NATS connection and the stores,
publisher, live node view, materializer and metrics built on it.

A `GatewayState` exists only connected: `await GatewayState.connect(...)`
makes the connection and the topology first and then the object, so `nc`
and `js` are never None and no route needs to ask."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from bus import job_feed, topology
from bus.auth_callout import AuthCallout
from bus.connection import close, connect
from bus.direct_batch import DirectGets
from bus.event_hub import EventHub
from bus.fallback_router import FallbackRouter
from bus.idempotency import IdempotencyStore
from bus.job_ttl import JobTtl
from bus.jobstore import JobStore
from bus.keystore import KeyStore
from bus.lag_monitor import LagMonitor
from bus.materializer import Materializer
from bus.metrics import GatewayMetrics
from bus.publisher import JobPublisher
from bus.queueing import PendingNotes
from bus.record_watch import RecordWatch
from bus.registry import LiveNodes
from bus.result_store import RecentResults
from bus.sealing import RecordSeal
from bus.settings import Settings
from bus.start_deadline import StartDeadlines
from bus.tls import nats_context
from bus.webhook_delivery import Policy as WebhookPolicy
from bus.webhook_delivery import WebhookDeliverer
from bus.webhook_outbox import WebhookOutbox
from gateway import routing
from gateway.admission import Admission, StreamCap
from gateway.job_views import webhook_payload
from gateway.recent_answers import RecentAnswers
from schemas import names
from schemas.errors import NotFound
from schemas.jobs import JobMessage
from schemas.names import Lane
from schemas.nodes import NodeHeartbeat

log = logging.getLogger("gpubus.gateway.state")

BACKLOG_CACHE_S = 1.0
RECENT_FAILURES_FRESH_S = 15.0  # queue-info's recent failures are at most this old (gateway/recent_answers.py)
RECENT_FAILURES_OWNERS = 1000  # owners kept at once (ten small views each); an owner past it reads again


def _features(nodes: list[NodeHeartbeat]) -> frozenset[str]:
    """The features some of `nodes` serve (with at least one engine)."""
    return frozenset(f for n in nodes for f, offers in n.features.items() if offers)


def _nats_tls(s: Settings) -> dict:
    """TLS to NATS with the operator's CA (the one nodes are handed)."""
    return {"tls": nats_context(s.nats_servers, ca_file=s.nats_ca_file), "allow_insecure": s.allow_insecure}


class GatewayState:
    """Built by `connect`; `close` stops the services and the connections."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        metrics: GatewayMetrics,
        nc: NatsClient,
        js: JetStreamContext,
        seal: RecordSeal,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.nc = nc
        self.js = js
        self.seal = seal
        self.ready = False
        # Submissions' last queueing step (bus/queueing.py), awaited before the services stop.
        self.notes = PendingNotes()
        # Inline results the materializer folded lately: a waiting client's result without a read.
        self.recent_results = RecentResults()
        self.system_nc: NatsClient | None = None
        self.auth_callout: AuthCallout | None = None
        self._owners_ready: set[str] = set()
        self.queues = topology.QueueMaker(js, settings)
        self._owner_lock = asyncio.Lock()
        self._backlog: dict[str, tuple[float, int]] = {}
        self.admission = Admission(self.active_jobs)
        self.event_streams = StreamCap(settings.max_event_streams, what="event streams")
        self.job_listings = StreamCap(settings.max_job_listings, what="job listings")
        self.recent_failures: RecentAnswers[str, list[dict[str, Any]]] = RecentAnswers(
            ttl_s=RECENT_FAILURES_FRESH_S, max_entries=RECENT_FAILURES_OWNERS
        )

    @classmethod
    async def connect(cls, settings: Settings, registry: CollectorRegistry, metrics: GatewayMetrics) -> GatewayState:
        """Connect, make the topology, start every service. The reconnect
        hook is wired before the state exists, so it goes through a list the
        services join once they are built."""
        on_reconnect: list[Callable[[], None]] = []

        def reconnected() -> None:
            for resubscribe in on_reconnect:
                resubscribe()

        nc = await connect(
            settings.nats_servers, name="gpubus-gateway", on_reconnect=reconnected, **_nats_tls(settings)
        )
        js = nc.jetstream()
        await topology.ensure_core(js, settings)
        st = cls(settings, registry, metrics, nc, js, RecordSeal.from_settings(settings))
        try:
            await st._start_services()
        except BaseException:  # half-started: the connection goes, and with it what was started
            await close(nc)
            raise
        on_reconnect += [st.nodes.rewatch, st.finishes.restart_soon, st.keys.rebuild_mirror]
        st.ready = True
        log.info("gateway connected to %s; topology ready", ",".join(settings.nats_servers_redacted))
        return st

    async def _start_services(self) -> None:
        s, js = self.settings, self.js
        self.finishes = RecordWatch(js, self.seal)
        await self.finishes.start()
        # A terminal state is committed only with its webhook queued (bus/webhook_outbox.py).
        outbox = WebhookOutbox(js, webhook_payload, give_up_after_s=s.publish_timeout)
        self.jobs = JobStore(
            topology.jobs_kv(js),
            self.seal,
            js=js,
            finishes=self.finishes,
            before_terminal=outbox.before_terminal,
            finished_ttl_s=s.records_max_age_days * topology.DAY_S,
            gets=DirectGets(self.nc, names.kv_stream(names.JOBS_BUCKET)),
        )
        self.feeds = job_feed.Sources(EventHub(self.nc), self.finishes, self.jobs)  # every /events client's
        self.keys = KeyStore(await js.key_value(names.APIKEYS_BUCKET), self.seal, js=js)
        self.idempotency = IdempotencyStore(await js.key_value(names.IDEMPOTENCY_BUCKET), self.seal)
        await self.keys.start_mirror(self.nc, js)
        self.publisher = JobPublisher(js, self.seal, give_up_after_s=s.publish_timeout, ensure_queue=self.queues)
        self.nodes = LiveNodes(
            await js.key_value(names.NODES_BUCKET), ttl_s=s.registry_ttl, on_bad=self.metrics.bad_heartbeats.inc
        )
        await self.nodes.start()
        self.router = FallbackRouter(
            js, self.jobs, self.publisher, self.metrics, self.seal, nc=self.nc, cpu_queue_for=self.cpu_queue_for
        )
        await self._start_auth_callout()
        self.materializer = Materializer(
            js, self.jobs, self.metrics, nc=self.nc, on_released=self.router.released, recent=self.recent_results
        )
        await self.materializer.start()
        await self.router.start()
        self.start_deadlines = StartDeadlines(
            js,
            self.jobs,
            self.seal,
            self.metrics,
            default_timeout_s=s.gpu_start_timeout,
            interval_s=s.start_scan_interval,
            gpu_live=lambda owner: bool(self.nodes.live(owner=owner, lane=Lane.GPU)),
            move=lambda job, seq, reason: self.router.to_cpu(job, seq, reason=reason),
        )
        await self.start_deadlines.start()
        self.ttl = JobTtl(js, self.jobs, self.metrics, nc=self.nc)
        await self.ttl.start()
        self.webhooks = WebhookDeliverer(
            self.nc,
            self.jobs,
            self.metrics,
            secret_of=self.webhook_secret,
            policy=WebhookPolicy(
                timeout_s=s.webhook_timeout,
                backoff_s=s.webhook_backoff,
                backoff_max_s=s.webhook_backoff_max,
                retry_for_s=s.webhook_retry_for,
                allow_private=s.allow_private_urls,
            ),
        )
        await self.webhooks.start()
        self.lag = LagMonitor(js, self.nc, interval_s=s.lag_poll_interval, metrics=self.metrics)
        self.metrics.watch_queues(self.lag.snapshot, self.nodes.live)
        await self.lag.start()

    async def _start_auth_callout(self) -> None:
        s = self.settings
        if s.nats_issuer_seed is None:
            return
        if s.nats_system_url is not None:
            self.system_nc = await connect(
                [u.strip() for u in s.nats_system_url.get_secret_value().split(",")],
                name="gpubus-gateway-sys",
                **_nats_tls(s),
            )
        self.auth_callout = AuthCallout(
            self.nc,
            self.keys,
            issuer_seed=s.nats_issuer_seed.get_secret_value(),
            admin_token=lambda: s.admin_token.get_secret_value() if s.admin_token else None,
            system_nc=self.system_nc,
            xkey_seed=s.nats_xkey_seed.get_secret_value() if s.nats_xkey_seed else None,
        )
        await self.auth_callout.start()

    async def close(self) -> None:
        """Services first (they use the connection), then the connections."""
        self.ready = False
        await asyncio.gather(*self.notes.tasks, return_exceptions=True)
        for part in (
            self.webhooks,
            self.lag,
            self.ttl,
            self.start_deadlines,
            self.router,
            self.materializer,
            self.nodes,
            self.auth_callout,
            self.finishes,
        ):
            if part is not None:
                await part.stop()
        await self.keys.stop_mirror()
        if self.system_nc is not None:
            await close(self.system_nc)
        await close(self.nc)

    async def webhook_secret(self, key_id: str) -> str | None:
        """The secret that signs the webhooks of a key's jobs (None: no such key, or none made)."""
        try:
            return self.keys.webhook_secret(await self.keys.get(key_id))
        except NotFound:
            return None

    async def ensure_owner(self, owner: str) -> None:
        """Create the owner's bucket and consumers once per process."""
        if owner in self._owners_ready:
            return
        async with self._owner_lock:
            if owner not in self._owners_ready:
                await topology.ensure_owner(self.js, self.settings, owner)
                self._owners_ready.add(owner)
                self.queues.made(*(names.consumer_name(owner, lane) for lane in Lane))

    async def active_jobs(self, owner: str) -> int:
        """Queued + running jobs of an owner: their unacked messages in the
        work-queue stream (two subject-filtered counts, asked side by side;
        no record scan)."""

        async def count(subject: str) -> int:
            info = await self.js.stream_info(names.JOBS_STREAM, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())

        return sum(await asyncio.gather(*(count(s) for s in names.owner_job_filters(owner))))

    @contextlib.contextmanager
    def job_listing(self, owner: str) -> Iterator[None]:
        """A slot of the owner's cap on listings running at once (429 past
        it): each reads a few times its limit of records, or every record
        for a status that is rare among the newest."""
        release = self.job_listings.take(owner)
        try:
            yield
        finally:
            release()

    def fleet(self, owner: str) -> routing.Fleet:
        """What routing needs to know of the owner's nodes, as of now."""
        gpu, cpu = self.nodes.live(owner=owner, lane=Lane.GPU), self.nodes.live(owner=owner, lane=Lane.CPU)
        shared = self.nodes.live(owner=names.SHARED)
        return routing.Fleet(
            owner_gpu_live=bool(gpu),
            owner_cpu_live=bool(cpu),
            gpu_backlog=lambda: self.gpu_backlog(owner),
            gpu_kinds=frozenset(k for n in gpu for k in n.kinds),
            cpu_kinds=frozenset(k for n in cpu for k in n.kinds),
            shared_kinds=frozenset(k for n in shared for k in n.kinds),
            gpu_features=_features(gpu),
            cpu_features=_features(cpu),
            shared_features=_features(shared),
        )

    def cpu_queue_for(self, job: JobMessage) -> str:
        """For the fallback router: the CPU queue by routing's one rule."""
        return routing.cpu_queue(job.owner, self.fleet(job.owner), job.kind, job.options.needs())

    async def gpu_backlog(self, owner: str) -> int:
        """Pending + unacked on the owner's GPU lane, every priority: the
        lane's messages in the work-queue stream (one subject-filtered
        count), cached briefly so a burst of submissions does not become a
        burst of requests."""
        cached = self._backlog.get(owner)
        if cached and time.monotonic() - cached[0] < BACKLOG_CACHE_S:
            return cached[1]
        info = await self.js.stream_info(names.JOBS_STREAM, subjects_filter=names.lane_filter(owner, Lane.GPU))
        backlog = sum((info.state.subjects or {}).values())
        self._backlog[owner] = (time.monotonic(), backlog)
        return backlog
