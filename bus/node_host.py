"""Hosting a node process: identity, connection, metrics, runtime, signals.

Shared by the GPU and CPU node profiles, which differ only in the processor
they build and the lane they pull. A node learns who it works for from the
gateway (`POST /api/v1/nodes/bootstrap` with its key), never from its own
say-so: the gateway checks the key and creates the owner's consumers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, start_http_server

from bus import node_permissions
from bus.connection import close, connect
from bus.metrics import GpuSource, NodeMetrics
from bus.node_runtime import NodeRuntime, new_node_id
from bus.sealing import RecordSeal
from bus.settings import Settings
from bus.tls import UntrustedCertificate, gateway_context, nats_context
from schemas.errors import GpubusError, InvalidInput, Unauthorized
from schemas.names import Lane
from schemas.processing import Processor

log = logging.getLogger("gpubus.bus.node_host")

BOOTSTRAP_PATH = "/api/v1/nodes/bootstrap"


@dataclass(frozen=True)
class NodeIdentity:
    queue_owner: str
    lane: Lane
    nats_servers: list[str]
    secret: str  # presented to NATS as the token; auth callout maps it to permissions
    inbox_prefix: str
    js_api_prefix: str  # where this node's account sees the JetStream API
    nats_tls: ssl.SSLContext | None = None  # verifies NATS: the operator's CA file, else the gateway's word


class NodeCutOff(GpubusError):
    """NATS will not have this node any more (its key was revoked or expired)."""

    code = "NODE_CUT_OFF"


class BootstrapFailed(GpubusError):
    """The gateway would not vouch for this node."""

    code = "BOOTSTRAP_FAILED"


async def bootstrap(settings: Settings, lane: Lane, *, shared: bool) -> NodeIdentity:
    if not settings.gateway_url:
        raise InvalidInput("a node needs GPUBUS_GATEWAY_URL (or --gateway) to bootstrap")
    secret = settings.admin_token if shared else settings.api_key
    if secret is None:
        what = "GPUBUS_ADMIN_TOKEN (service identity)" if shared else "GPUBUS_API_KEY (a key with the node role)"
        raise InvalidInput(f"a {'shared' if shared else 'user'} node needs {what}")
    r = await _post_bootstrap(settings, {"lane": lane.value, "shared": shared}, secret.get_secret_value())
    if r.status_code == 401:
        raise Unauthorized(f"gateway refused the node's credentials: {r.text}")
    if r.status_code != 200:
        raise BootstrapFailed(f"gateway answered {r.status_code}: {r.text}")
    body = r.json()
    ca_pem = settings.nats_ca_file.read_text() if settings.nats_ca_file else body.get("nats_ca_pem")
    return NodeIdentity(
        queue_owner=body["queue_owner"],
        lane=Lane(body["lane"]),
        nats_servers=body["nats_servers"],
        secret=secret.get_secret_value(),
        inbox_prefix=body.get("inbox_prefix") or "_INBOX",
        js_api_prefix=body.get("js_api_prefix") or node_permissions.JS_API,
        nats_tls=nats_context(body["nats_servers"], ca_pem=ca_pem),
    )


async def _post_bootstrap(settings: Settings, body: dict[str, Any], secret: str) -> httpx.Response:
    """Over TLS verified as the operator said (CA file or pinned
    certificate): the answer tells the node which NATS CA to trust."""
    url = settings.gateway_url or ""
    verify = await asyncio.to_thread(
        gateway_context,
        url,
        ca_file=settings.tls_ca_file,
        pin=settings.gateway_fingerprint,
        allow_insecure=settings.allow_insecure,
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=15, verify=verify or True) as client:
            return await client.post(BOOTSTRAP_PATH, json=body, headers={"Authorization": f"Bearer {secret}"})
    except httpx.ConnectError as e:
        if isinstance(e.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            raise UntrustedCertificate(f"gateway {url} certificate not trusted: {e}") from e
        raise


def start_metrics_server(settings: Settings, registry: CollectorRegistry) -> str:
    server, _thread = start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    host, port = server.server_address[:2]
    return f"http://{advertised_host(str(host))}:{port}/metrics"


def advertised_host(bound: str) -> str:
    """The address others reach our metrics at. A container binds 0.0.0.0,
    which Prometheus (fed the node's metrics_url through the gateway) would
    take as itself: advertise this host's own address instead, the
    container's or pod's IP on its network."""
    if bound not in ("0.0.0.0", "::", ""):
        return bound
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return bound


async def start_node(
    settings: Settings,
    lane: Lane,
    make_processor: Callable[[str], Processor],
    *,
    shared: bool = False,
    handle_signals: bool = True,
    gpu_source: Callable[[], GpuSource] | None = None,
) -> NodeRuntime:
    """Bootstrap, load the model, serve metrics, connect and start pulling.
    `gpu_source` (GPU nodes) adds GPU memory/utilisation to the metrics."""
    identity = await bootstrap(settings, lane, shared=shared)
    node_id = new_node_id(lane)
    processor = await asyncio.to_thread(make_processor, node_id)
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry, node_id=node_id, device=processor.device)
    load_s = getattr(processor, "load_seconds", None)
    if load_s is not None:
        metrics.model_load_seconds.set(load_s)
    clip_counts = getattr(processor, "clip_counts", None)
    if clip_counts is not None:
        metrics.watch_clips(clip_counts)
    if gpu_source is not None:
        metrics.watch_gpus(gpu_source())
    metrics_url = start_metrics_server(settings, registry)
    lost = asyncio.Event()
    nc = await connect(
        identity.nats_servers,
        name=node_id,
        token=identity.secret,
        inbox_prefix=identity.inbox_prefix,
        on_closed=lost.set,
        tls=identity.nats_tls,
        allow_insecure=settings.allow_insecure,
    )
    runtime = NodeRuntime(
        nc,
        processor,
        queue_owner=identity.queue_owner,
        lane=identity.lane,
        capacity=settings.node_concurrency,
        job_deadline_s=settings.job_deadline,
        metrics=metrics,
        node_id=node_id,
        metrics_url=metrics_url,
        handle_signals=handle_signals,
        drain_timeout_s=settings.drain_timeout,
        bus_retry_s=settings.publish_timeout,
        connection_lost=lost,
        js_api_prefix=identity.js_api_prefix,
        job_seal=RecordSeal.from_settings(settings) if shared else None,
        inline_result_max=settings.inline_result_max,
        prefetch=_prefetch(settings, identity.lane, processor.device),
    )
    await runtime.start()
    log.info("node %s ready: %s lane of %s, metrics %s", node_id, identity.lane, identity.queue_owner, metrics_url)
    return runtime


async def run_node(
    settings: Settings,
    lane: Lane,
    make_processor: Callable[[str], Processor],
    *,
    shared: bool = False,
    gpu_source: Callable[[], GpuSource] | None = None,
) -> None:
    """A node process: run until SIGTERM/SIGINT, then drain (NodeRuntime.stop)."""
    runtime = await start_node(settings, lane, make_processor, shared=shared, gpu_source=gpu_source)
    print(f"node {runtime.node_id} ready ({runtime!r}), metrics {runtime.metrics_url}", flush=True)
    stopped = asyncio.create_task(runtime.stopped.wait())
    lost = asyncio.create_task(runtime.connection_lost.wait())
    try:
        await asyncio.wait([stopped, lost], return_when=asyncio.FIRST_COMPLETED)
        if lost.done() and not runtime.stopped.is_set():
            # nats-py gives up only when NATS refuses us (a revoked or expired
            # key): in-flight jobs will be redelivered elsewhere.
            log.error("node %s: NATS closed the connection for good (key revoked?); exiting", runtime.node_id)
            await close(runtime.nc)  # stop nats-py's reconnect loop before the runtime winds down
            raise NodeCutOff(f"node {runtime.node_id} lost its NATS connection for good")
    finally:
        stopped.cancel()
        lost.cancel()
        await runtime.close()


def _prefetch(settings: Settings, lane: Lane, device: str) -> int:
    """One job ahead on a GPU node (its engine outruns input decoding), none
    on CPU: a CPU job held by a busy node is a job another node could run.
    A node that packs short clips (GPUBUS_CLIP_PACK) takes a whole gathering
    ahead, on either lane: while one decodes, the next one's inputs are
    fetched and decoded, and the batch waits for them
    (processors/clip_batcher.py) instead of going with the one or two clips
    that reached the engine first. Not yet for CUDA's batch rows: unmeasured
    there, and a job held ahead is one a high-priority job queues behind."""
    if settings.node_prefetch is not None:
        return settings.node_prefetch
    if settings.clip_pack and (gathered := settings.clip_batch_for(device)) > 1:
        return gathered
    return 1 if lane is Lane.GPU else 0
