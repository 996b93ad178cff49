"""`gpubus`: run the system, its parts, and talk to a gateway."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bus.settings import Settings
from ops.client import GatewayClient
from ops.logs import configure_logging
from schemas.errors import GpubusError

FORMATS = ["json", "text", "srt", "vtt", "md"]


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    updates = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**updates) if updates else Settings()


def _client(settings: Settings, *, admin: bool = False) -> GatewayClient:
    """Environment first, then the `up.json` a local `gpubus up` wrote (its
    URL, key and, with --tls, the CA that verifies the gateway)."""
    from bus.tls import gateway_context

    url = settings.gateway_url
    token = (settings.admin_token if admin else settings.api_key)
    secret = token.get_secret_value() if token else None
    ca_file = settings.tls_ca_file
    up_json = settings.data_dir / "up.json"
    if (url is None or secret is None) and up_json.exists():
        info = json.loads(up_json.read_text())
        url = url or info.get("gateway_url")
        secret = secret or info.get("admin_token" if admin else "api_key")
        ca_file = ca_file or (Path(info["tls_ca_file"]) if info.get("tls_ca_file") else None)
    if url is None:
        raise SystemExit("no gateway: set GPUBUS_GATEWAY_URL (or run `gpubus up` here)")
    verify = gateway_context(url, ca_file=ca_file, pin=settings.gateway_fingerprint,
                             allow_insecure=settings.allow_insecure)
    return GatewayClient(url, secret, verify=verify)


def cmd_up(args: argparse.Namespace) -> None:
    import asyncio

    from ops import up

    s = _settings(args, port=args.port, data_dir=args.data_dir, host=args.host)
    asyncio.run(up.run(s, nats_port=args.nats_port, cluster=args.cluster, tls=args.tls))


def cmd_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from gateway.app import create_app
    from ops.tls import uvicorn_options

    s = _settings(args, port=args.port, host=args.host)
    uvicorn.run(create_app(s), host=s.host, port=s.port, log_config=None, timeout_graceful_shutdown=30,
                **uvicorn_options(s))


def _node_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return _settings(
        args, gateway_url=args.gateway, api_key=node_api_key(args), tls_ca_file=args.gateway_ca,
        gateway_fingerprint=args.gateway_fingerprint, nats_ca_file=args.nats_ca,
        allow_insecure=args.allow_insecure or None, **overrides,
    )


API_KEY_IN_ARGV = (
    "warning: --api-key is visible to every local user (ps, /proc/*/cmdline); "
    "use --api-key-file or GPUBUS_API_KEY instead"
)


def node_api_key(args: argparse.Namespace) -> str | None:
    """The node's key from --api-key-file, else --api-key (with a warning:
    argv is world-readable), else None: GPUBUS_API_KEY then applies."""
    if args.api_key_file is not None:
        key = args.api_key_file.read_text().strip()
        if not key:
            raise SystemExit(f"error: {args.api_key_file} is empty")
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


def cmd_keys(args: argparse.Namespace) -> None:
    c = _client(Settings(), admin=True)
    if args.keys_cmd == "create":
        roles = args.role or ["user"]
        body = {"user_id": args.user, "roles": roles, "description": args.description or ""}
        if args.expires_days:
            body["expires_days"] = args.expires_days
        out = c.post("/api/v1/auth/keys", body)
    elif args.keys_cmd == "list":
        out = c.get("/api/v1/auth/keys")
    else:
        out = c.delete(f"/api/v1/auth/keys/{args.key_id}")
    print(json.dumps(out, indent=2))


def cmd_submit(args: argparse.Namespace) -> None:
    from ops import progress

    c = _client(Settings())
    options = json.loads(args.options) if args.options else {}
    flags = {"language": args.language, "task": args.task, "model": args.model, "initial_prompt": args.prompt}
    options.update({k: v for k, v in flags.items() if v is not None})
    options.update({k: True for k in ("word_timestamps", "vad_filter") if getattr(args, k)})
    target = args.target
    if "://" in target:  # a URL job; the gateway judges the scheme
        job = c.submit_json({"url": target, "gpu": args.gpu, "options": options})
    else:
        job = progress.upload(c, Path(target), gpu=args.gpu, kind=args.kind, options=options)
    print(f"job {job['job_id']} {job['status']} on {job['lane']} ({job['routed_reason']})", file=sys.stderr)
    if not args.wait:
        print(json.dumps(job, indent=2))
        return
    final = progress.wait(c, job["job_id"])
    if final["status"] != "succeeded":
        err = final.get("error") or {}
        raise SystemExit(f"job {final['status']}: {err.get('code')}: {err.get('message')}")
    sys.stdout.write(c.result(job["job_id"], args.format))


def cmd_jobs(args: argparse.Namespace) -> None:
    c = _client(Settings())
    if args.jobs_cmd == "list":
        for j in c.jobs(args.status, args.limit):
            err = (j.get("error") or {}).get("code", "")
            print(f"{j['job_id']}  {j['status']:<10} {j['lane']:<4} {j['kind']:<6} {j.get('node_id') or '-':<28} {err}")
    elif args.jobs_cmd == "show":
        print(json.dumps(c.job(args.job_id), indent=2))
    elif args.jobs_cmd == "result":
        sys.stdout.write(c.result(args.job_id, args.format))
    else:
        print(json.dumps(c.post(f"/api/v1/jobs/{args.job_id}/{args.jobs_cmd}"), indent=2))


def cmd_status(args: argparse.Namespace) -> None:
    from ops import progress

    progress.status(_client(Settings()), watch=args.watch)


def cmd_nats_auth(args: argparse.Namespace) -> None:
    """Fresh NATS identities for a deployment, as .env lines (ops/deploy)."""
    from bus import xkeys
    from bus.nats_jwt import public_key
    from ops.embedded_nats import NatsAuth

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

        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": "gpubus-nats"}, "stringData": values}
        print(json.dumps(secret, indent=2))
        return
    for name, value in values.items():
        print(f"GPUBUS_NATS_{name.upper().replace('-', '_')}={value}")


def cmd_doctor(args: argparse.Namespace) -> None:
    from ops import doctor

    raise SystemExit(doctor.run(Settings()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpubus", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="embedded NATS + gateway + CPU node (+ GPU node with CUDA)")
    up.add_argument("--port", type=int)
    up.add_argument("--host")
    up.add_argument("--data-dir", type=Path)
    up.add_argument("--nats-port", type=int, default=0, help="0 = a free port (with --cluster: the first of N)")
    up.add_argument(
        "--cluster", type=int, default=1, choices=range(1, 6), metavar="N",
        help="run N embedded nats-servers as one JetStream cluster, replicas N (default 1: a single server)",
    )
    up.add_argument("--tls", action="store_true",
                    help="TLS on NATS (clients and routes) and HTTPS on the gateway, from a CA in <data-dir>/tls")
    up.set_defaults(fn=cmd_up)

    gw = sub.add_parser("gateway", help="the REST gateway")
    gw.add_argument("--port", type=int)
    gw.add_argument("--host")
    gw.set_defaults(fn=cmd_gateway)

    for name, fn in (("gpu-node", cmd_gpu_node), ("cpu-node", cmd_cpu_node)):
        n = sub.add_parser(name, help=f"a {name.split('-')[0].upper()} node")
        n.add_argument("--gateway", help="gateway URL (GPUBUS_GATEWAY_URL)")
        key = n.add_mutually_exclusive_group()
        key.add_argument("--api-key-file", type=Path, help="file holding a key with the node role")
        key.add_argument("--api-key", help="a key with the node role; visible in ps, prefer --api-key-file or GPUBUS_API_KEY")
        n.add_argument("--gateway-ca", type=Path, help="CA file that verifies the https gateway (GPUBUS_TLS_CA_FILE)")
        n.add_argument("--gateway-fingerprint", help="or pin the gateway's certificate by SHA-256 (GPUBUS_GATEWAY_FINGERPRINT)")
        n.add_argument("--nats-ca", type=Path, help="CA of NATS; default: the one the gateway gives (GPUBUS_NATS_CA_FILE)")
        n.add_argument("--allow-insecure", action="store_true",
                       help="allow plaintext to a non-loopback gateway or NATS (GPUBUS_ALLOW_INSECURE)")
        if name == "gpu-node":
            n.add_argument("--device", choices=["auto", "cuda", "cpu"], help="cpu: tests only")
        else:
            n.add_argument("--shared", action="store_true", help="serve the shared pool (service identity)")
        n.set_defaults(fn=fn)

    keys = sub.add_parser("keys", help="API keys (admin)")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create")
    kc.add_argument("user")
    kc.add_argument("--role", action="append", choices=["user", "node"])
    kc.add_argument("--expires-days", type=float)
    kc.add_argument("--description")
    ks.add_parser("list")
    kr = ks.add_parser("revoke")
    kr.add_argument("key_id")
    keys.set_defaults(fn=cmd_keys)

    sm = sub.add_parser("submit", help="submit a file or URL")
    sm.add_argument("target")
    sm.add_argument("--gpu", action="store_true")
    sm.add_argument("--wait", action="store_true")
    sm.add_argument("--format", choices=FORMATS, default="text")
    sm.add_argument("--kind", choices=["audio", "video"])
    sm.add_argument("--language", help="e.g. en; default: detected")
    sm.add_argument("--task", choices=["transcribe", "translate"])
    sm.add_argument("--model", help="one a live node serves (see `gpubus status`)")
    sm.add_argument("--prompt", help="initial prompt: names, spelling, style")
    sm.add_argument("--word-timestamps", dest="word_timestamps", action="store_true")
    sm.add_argument("--vad", dest="vad_filter", action="store_true", help="skip silence (Silero VAD)")
    sm.add_argument("--options", help="options JSON")
    sm.set_defaults(fn=cmd_submit)

    jobs = sub.add_parser("jobs", help="list and inspect jobs")
    js = jobs.add_subparsers(dest="jobs_cmd", required=True)
    jl = js.add_parser("list")
    jl.add_argument("--status")
    jl.add_argument("--limit", type=int, default=50)
    for name in ("show", "cancel", "retry"):
        js.add_parser(name).add_argument("job_id")
    jr = js.add_parser("result")
    jr.add_argument("job_id")
    jr.add_argument("--format", choices=FORMATS, default="text")
    jobs.set_defaults(fn=cmd_jobs)

    st = sub.add_parser("status", help="live nodes and queues")
    st.add_argument("--watch", action="store_true")
    st.set_defaults(fn=cmd_status)

    tls = sub.add_parser("tls", help="certificates for TLS (ops/tls.py)")
    ts = tls.add_subparsers(dest="tls_cmd", required=True)
    ti = ts.add_parser("init", help="a CA and a server certificate in DIR (kept if they exist and cover the names)")
    ti.add_argument("--dir", type=Path, default=Path("tls"))
    ti.add_argument("--name", action="append", default=[], help="a DNS name or IP the servers are reached at (repeat)")
    ti.set_defaults(fn=cmd_tls_init)

    sub.add_parser("doctor", help="check this machine and the configuration").set_defaults(fn=cmd_doctor)
    na = sub.add_parser("nats-auth", help="print fresh NATS auth secrets for a deployment's .env")
    na.add_argument("--k8s", action="store_true", help="as the Kubernetes Secret `gpubus-nats` instead")
    na.set_defaults(fn=cmd_nats_auth)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.fn(args)
    except GpubusError as e:  # a node that cannot start (no model, no CUDA) says why and exits 1
        raise SystemExit(f"error: {e.code}: {e.message}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
