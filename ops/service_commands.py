"""The `gpubus` commands that run a part of the system: up, gateway, the
nodes, and the TLS and NATS identities a deployment needs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bus.settings import Settings
from ops.cli_support import readable_file, settings_from
from ops.exits import (
    UsageError,
)


def cmd_up(args: argparse.Namespace) -> None:
    import asyncio

    from ops import up

    s = settings_from(args, port=args.port, data_dir=args.data_dir, host=args.host)
    asyncio.run(
        up.run(s, nats_port=args.nats_port, cluster=args.cluster, tls=args.tls, monitor_port=args.nats_monitor_port)
    )


def cmd_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from gateway.app import create_app
    from ops.tls import uvicorn_options

    s = settings_from(args, port=args.port, host=args.host)
    uvicorn.run(
        create_app(s), host=s.host, port=s.port, log_config=None, timeout_graceful_shutdown=30, **uvicorn_options(s)
    )


def _node_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return settings_from(
        args,
        gateway_url=args.gateway,
        api_key=node_api_key(args),
        tls_ca_file=args.gateway_ca,
        gateway_fingerprint=args.gateway_fingerprint,
        nats_ca_file=args.nats_ca,
        allow_insecure=args.allow_insecure or None,
        **overrides,
    )


API_KEY_IN_ARGV = (
    "warning: --api-key is visible to every local user (ps, /proc/*/cmdline); "
    "use --api-key-file or GPUBUS_API_KEY instead"
)


def node_api_key(args: argparse.Namespace) -> str | None:
    """The node's key from --api-key-file, else --api-key (with a warning:
    argv is world-readable), else None: GPUBUS_API_KEY then applies."""
    if args.api_key_file is not None:
        key = readable_file(args.api_key_file).read_text().strip()
        if not key:
            raise UsageError(f"{args.api_key_file} is empty")
        return key
    if args.api_key is not None:
        print(API_KEY_IN_ARGV, file=sys.stderr)
    return args.api_key


def cmd_gpu_node(args: argparse.Namespace) -> None:
    from gpu_node.main import main

    main(_node_settings(args, device=args.device))


def cmd_cpu_node(args: argparse.Namespace) -> None:
    from cpu_node.main import main

    main(_node_settings(args), shared=args.shared)


def cmd_tls_init(args: argparse.Namespace) -> None:
    """A CA and a server certificate for a deployment (ops/deploy), as files
    and the .env lines that point at them."""
    from ops import tls

    files = tls.load_or_create(args.dir, args.name)
    print(f"# CA {files.ca_file} (give it to nodes: --gateway-ca), key {args.dir / tls.CA_KEY} (keep it here)")
    print(f"# server certificate for {', '.join([*tls.DEFAULT_NAMES, *args.name])}")
    print(f"GPUBUS_TLS_DIR={args.dir.resolve()}")
    print(f"GPUBUS_GATEWAY_FINGERPRINT={files.cert_sha256}")


def cmd_nats_auth(args: argparse.Namespace) -> None:
    """Fresh NATS identities for a deployment, as .env lines (ops/deploy)."""
    from bus import xkeys
    from bus.nats_jwt import public_key
    from ops.nats_identity import NatsAuth

    auth = NatsAuth.generate()
    assert auth.xkey_seed is not None  # generate() always makes one
    values = {
        "service-password": auth.service_password,
        "system-password": auth.system_password,
        "issuer-seed": auth.issuer_seed,
        "issuer": public_key(auth.issuer_seed),
        "xkey-seed": auth.xkey_seed,
        "xkey": xkeys.public_key(auth.xkey_seed),
    }
    if args.k8s:  # the Secret ops/deploy/k8s reads (NATS pods and the gateway)
        import json

        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "gpubus-nats"},
            "stringData": values,
        }
        print(json.dumps(secret, indent=2))
        return
    for name, value in values.items():
        print(f"GPUBUS_NATS_{name.upper().replace('-', '_')}={value}")
