"""`gpubus up`: the whole system on one machine, in one process.

An embedded nats-server (subprocess), the gateway, a shared CPU node, and a
GPU node for the local user when CUDA is present. Prints the gateway URL and
a fresh API key, and writes `<data-dir>/up.json` for scripts.

`--cluster N` runs N embedded servers as one JetStream cluster instead, with
every stream, bucket and consumer replicated N times (at most 5): the setup
of a real deployment, on one machine, to try failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from bus.node_host import start_node
from bus.settings import Settings
from cpu_node.main import make_processor as make_cpu
from gateway.app import create_app
from gpu_node import device, telemetry
from gpu_node.main import make_processor as make_gpu
from ops import tls as ops_tls
from ops.embedded_nats import NatsCluster, NatsServer, free_port
from ops.nats_identity import NatsAuth, NatsTls
from ops.private_files import private_dir, write_private
from ops.tls import TlsFiles
from schemas.keys import Role
from schemas.names import Lane

log = logging.getLogger("gpubus.ops.up")

LOCAL_USER = "local"


class _Server(uvicorn.Server):
    """Signals are ours: we stop nodes and NATS in order after the gateway."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def admin_token(data_dir: Path, settings: Settings) -> str:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    path = data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = "adm_" + secrets.token_urlsafe(32)
    write_private(path, token)
    return token


def start_nats(
    data_dir: Path,
    *,
    nats_port: int,
    cluster: int,
    auth: NatsAuth | None,
    tls: NatsTls | None = None,
    monitor_port: int = 0,
) -> NatsServer | NatsCluster:
    """One server by default; a cluster keeps its stores apart from the
    single server's, so switching between the two never mixes state. Every
    server has its monitoring port on loopback (operators' /jsz, /varz, /connz)."""
    if cluster <= 1:
        http_port = monitor_port or free_port()
        return NatsServer(
            store_dir=data_dir / "nats", port=nats_port, host="127.0.0.1", auth=auth, tls=tls, http_port=http_port
        ).start()
    return NatsCluster(
        store_dir=data_dir / f"nats-cluster{cluster}", size=cluster, first_port=nats_port, auth=auth, tls=tls
    ).start()


def tls_settings(settings: Settings, data_dir: Path) -> tuple[TlsFiles, dict]:
    """One CA and certificate for the embedded NATS and the gateway: nodes
    verify the gateway with the CA (or the certificate's fingerprint) and
    learn the same CA for NATS at bootstrap."""
    files = ops_tls.for_settings(settings, data_dir / "tls")
    return files, {
        "nats_ca_file": files.ca_file,
        "tls_ca_file": files.ca_file,
        "tls_cert_file": files.cert_file,
        "tls_key_file": files.key_file,
    }


async def run(
    settings: Settings, *, nats_port: int, cluster: int = 1, tls: bool = False, monitor_port: int = 0
) -> None:
    data_dir = settings.data_dir.resolve()
    private_dir(data_dir)
    token = admin_token(data_dir, settings)
    auth = NatsAuth.load_or_create(data_dir / "nats_auth.json")
    files, tls_update = tls_settings(settings, data_dir) if tls else (None, {})
    nats_tls = NatsTls(files.cert_file, files.key_file, files.ca_file) if files else None
    nats = start_nats(
        data_dir, nats_port=nats_port, cluster=cluster, auth=auth, tls=nats_tls, monitor_port=monitor_port
    )
    gateway_url = f"{'https' if files else 'http'}://{settings.host}:{settings.port}"
    settings = settings.model_copy(
        update={
            **tls_update,
            "nats_url": nats.url,
            "nats_public_url": nats.public_url,
            "nats_issuer_seed": SecretStr(auth.issuer_seed),
            "nats_xkey_seed": SecretStr(auth.xkey_seed) if auth.xkey_seed else None,
            "nats_system_url": SecretStr(nats.system_url or ""),
            "admin_token": SecretStr(token),
            "gateway_url": gateway_url,
            "replicas": max(1, cluster),
        }
    )
    app = create_app(settings)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            lifespan="on",
            **ops_tls.uvicorn_options(settings),
        )
    )
    serve = asyncio.create_task(server.serve())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nodes = []
    try:
        while not server.started:
            if serve.done():
                await serve  # raises why it could not start
                return
            await asyncio.sleep(0.05)
        keys = app.state.gateway.keys
        full_key, key_rec = await keys.create(LOCAL_USER, [Role.USER, Role.NODE], description="created by gpubus up")
        nodes.append(
            await start_node(settings, Lane.CPU, lambda nid: make_cpu(settings, nid), shared=True, handle_signals=False)
        )
        if device.cuda_device_count() > 0:
            gpu_settings = settings.model_copy(update={"api_key": SecretStr(full_key), "device": "cuda"})
            nodes.append(
                await start_node(
                    gpu_settings,
                    Lane.GPU,
                    lambda nid: make_gpu(gpu_settings, nid),
                    handle_signals=False,
                    gpu_source=telemetry.open_source,
                )
            )
        info = {
            "gateway_url": gateway_url,
            "nats_url": nats.url,
            "api_key": full_key,
            "webhook_secret": keys.webhook_secret(key_rec),  # signs the webhooks of this key's jobs
            "admin_token": token,
            "user_id": LOCAL_USER,
            "nats_monitor_url": nats.monitor_url,
        }
        if files:
            info |= {
                "nats_public_url": nats.public_url,
                "tls_ca_file": str(files.ca_file),
                "gateway_fingerprint": files.cert_sha256,
            }
        up_json = data_dir / "up.json"
        write_private(up_json, json.dumps(info, indent=2))  # nats_url carries the service password
        tls_lines = f"  tls ca:  {files.ca_file}\n  gateway certificate sha256: {files.cert_sha256}\n" if files else ""
        print(
            f"gpubus is up\n  gateway: {gateway_url}\n  web:     {gateway_url}/  (sign in with the api key)\n"
            f"  api key: {full_key}  (user {LOCAL_USER})\n"
            f"  nats:    {nats.public_url}\n"
            f"  monitor: {nats.monitor_url}  (/varz /jsz /connz /healthz)\n{tls_lines}"
            f"  nodes:   {', '.join(n.node_id for n in nodes)}\n  details: {up_json}",
            flush=True,
        )
        await stop.wait()
    finally:
        # Order: nodes drain first (while gateway and NATS are up), then the
        # gateway finishes its requests, then NATS stops.
        for node in nodes:
            await node.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serve
        nats.stop()
        with contextlib.suppress(FileNotFoundError):
            os.remove(data_dir / "up.json")
