"""`gpubus doctor`: what this machine and configuration can do."""

from __future__ import annotations

import httpx

from bus.settings import Settings
from bus.tls import gateway_context
from gpu_node import device
from ops.embedded_nats import NatsServerError, server_binary, server_version
from processors import model_paths
from schemas.errors import GpubusError


def run(settings: Settings) -> int:
    problems = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")

    try:
        binary = server_binary()
        check("nats-server", True, f"{binary} v{'.'.join(map(str, server_version(binary)))}")
    except NatsServerError as e:
        check("nats-server", False, str(e))
    try:
        name, path = model_paths.resolve(settings.whisper_model)
        check("whisper model", True, f"{name} ({path})")
    except model_paths.ModelUnavailable as e:
        check("whisper model", False, str(e))
    n = device.cuda_device_count()
    print(f"[info] CUDA devices: {n}" + ("" if n else " (GPU nodes need --device cpu here)"))
    if settings.gateway_url:
        try:
            verify = gateway_context(
                settings.gateway_url,
                ca_file=settings.tls_ca_file,
                pin=settings.gateway_fingerprint,
                allow_insecure=settings.allow_insecure,
            )
            r = httpx.get(f"{settings.gateway_url}/ready", timeout=5, verify=verify or True)
            check("gateway", r.status_code == 200, f"{settings.gateway_url}/ready -> {r.status_code}")
        except (httpx.HTTPError, GpubusError, OSError) as e:  # unreachable, untrusted or plaintext refused
            check("gateway", False, f"{settings.gateway_url}: {e}")
    return 1 if problems else 0
