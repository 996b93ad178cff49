"""`gpubus`: run the system, its parts, and talk to a gateway."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from bus.settings import Settings
from ops.client import GatewayClient, unreachable
from ops.exits import (
    ExitCode,
    JobUnsuccessful,
    MissingFile,
    NotConfigured,
    UnreadableFile,
    UsageError,
    WaitInterrupted,
    epilog,
    failure_of,
)
from ops.logs import configure_logging

FORMATS = ["json", "text", "srt", "vtt", "md"]


def package_version() -> str:
    """The installed distribution's version, the one pip and bug reports
    speak of (not a second copy in the source that could drift)."""
    try:
        return metadata.version("gpubus")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def print_json(data: Any) -> None:
    """The one JSON document a command prints on stdout."""
    print(json.dumps(data, indent=2))


def readable_file(path: Path) -> Path:
    """`path`, checked before anything is sent or started: a mistyped name
    should read as one line, not as a traceback from deep in an upload."""
    try:
        with path.open("rb"):
            return path
    except FileNotFoundError:
        raise MissingFile(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise UnreadableFile(f"cannot read {path}: {e.strerror or e}") from None


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    updates = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**updates) if updates else Settings()


def _client(settings: Settings, *, admin: bool = False) -> GatewayClient:
    """Environment first, then the `up.json` a local `gpubus up` wrote (its
    URL, key and, with --tls, the CA that verifies the gateway)."""
    from bus.tls import gateway_context

    url = settings.gateway_url
    token = settings.admin_token if admin else settings.api_key
    secret = token.get_secret_value() if token else None
    ca_file = settings.tls_ca_file
    up_json = settings.data_dir / "up.json"
    if (url is None or secret is None) and up_json.exists():
        info = json.loads(up_json.read_text())
        url = url or info.get("gateway_url")
        secret = secret or info.get("admin_token" if admin else "api_key")
        ca_file = ca_file or (Path(info["tls_ca_file"]) if info.get("tls_ca_file") else None)
    if url is None:
        raise NotConfigured("no gateway: set GPUBUS_GATEWAY_URL (or run `gpubus up` here)")
    try:
        verify = gateway_context(
            url,
            ca_file=ca_file and readable_file(ca_file),
            pin=settings.gateway_fingerprint,
            allow_insecure=settings.allow_insecure,
        )
    except OSError as e:  # fetching a pinned certificate: refused, DNS, not TLS
        raise unreachable(url, e) from e
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
    uvicorn.run(
        create_app(s), host=s.host, port=s.port, log_config=None, timeout_graceful_shutdown=30, **uvicorn_options(s)
    )


def _node_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    return _settings(
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
    print_json(out)  # JSON with or without --json: a key is shown once, in full


def result_format(args: argparse.Namespace) -> str:
    """--json means the result's JSON; another --format with it is a
    contradiction, refused rather than silently picked."""
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json prints the result as JSON; drop --json or --format {args.format}")
    return args.format or ("json" if args.json else "text")


def submit_options(args: argparse.Namespace) -> dict[str, Any]:
    """--options JSON, then the flags on top of it."""
    try:
        options = json.loads(args.options) if args.options else {}
    except ValueError as e:
        raise UsageError(f"--options is not JSON: {e}") from None
    if not isinstance(options, dict):
        raise UsageError("--options must be a JSON object")
    flags = {"language": args.language, "task": args.task, "model": args.model, "initial_prompt": args.prompt}
    options.update({k: v for k, v in flags.items() if v is not None})
    options.update({k: True for k in ("word_timestamps", "vad_filter") if getattr(args, k)})
    return options


def cmd_submit(args: argparse.Namespace) -> None:
    """Without --wait: the job record. With --wait: the result as --format,
    or with --json one document {"job": final record, "result": its JSON}."""
    from ops import progress

    fmt = result_format(args)
    options = submit_options(args)
    target = args.target
    path = None if "://" in target else readable_file(Path(target))  # a URL job: the gateway judges the scheme
    c = _client(Settings())
    if path is None:
        job = c.submit_json({"url": target, "gpu": args.gpu, "options": options})
    else:
        job = progress.upload(c, path, gpu=args.gpu, kind=args.kind, options=options)
    print(f"job {job['job_id']} {job['status']} on {job['lane']} ({job['routed_reason']})", file=sys.stderr)
    if not args.wait:
        print_json(job)
        return
    try:
        final = progress.wait(c, job["job_id"])
    except KeyboardInterrupt:
        raise WaitInterrupted(job["job_id"]) from None
    succeeded = final["status"] == "succeeded"
    if args.json:
        print_json({"job": final, "result": json.loads(c.result(job["job_id"], fmt)) if succeeded else None})
    if not succeeded:
        raise JobUnsuccessful(final)
    if not args.json:
        sys.stdout.write(c.result(job["job_id"], fmt))


def cmd_jobs(args: argparse.Namespace) -> None:
    c = _client(Settings())
    if args.jobs_cmd == "list":
        jobs = c.jobs(args.status, args.limit)
        if args.json:
            print_json({"jobs": jobs})
            return
        for j in jobs:  # whole ids, never cut: they are what the other commands take
            err = (j.get("error") or {}).get("code", "")
            print(f"{j['job_id']}  {j['status']:<10} {j['lane']:<4} {j['kind']:<6} {j.get('node_id') or '-':<28} {err}")
    elif args.jobs_cmd == "show":
        print_json(c.job(args.job_id))
    elif args.jobs_cmd == "result":
        fmt = result_format(args)
        text = c.result(args.job_id, fmt)
        if args.json:
            print_json(json.loads(text))
        else:
            sys.stdout.write(text)
    else:
        print_json(c.post(f"/api/v1/jobs/{args.job_id}/{args.jobs_cmd}"))


def cmd_status(args: argparse.Namespace) -> None:
    from ops import progress

    if args.json and args.watch:
        raise UsageError("--watch redraws a terminal; with --json, run `gpubus status --json` as often as needed")
    c = _client(Settings())
    if args.json:
        print_json(c.get(progress.QUEUE_INFO))
        return
    progress.status(c, watch=args.watch)


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


DOCTOR_LINE = re.compile(r"^\[(ok|FAIL|info)\] ([^:]+): (.*)$")


def doctor_checks(text: str) -> list[dict[str, str]]:
    """`doctor.run`'s lines (`[ok] name: detail`) as records, so --json
    reuses its checks instead of keeping a second copy of them."""
    found = (DOCTOR_LINE.match(line) for line in text.splitlines())
    return [{"result": m[1].lower(), "name": m[2], "detail": m[3]} for m in found if m]


def cmd_doctor(args: argparse.Namespace) -> int:
    from ops import doctor

    if not args.json:
        return doctor.run(Settings())
    with contextlib.redirect_stdout(io.StringIO()) as text:
        problems = doctor.run(Settings())
    print_json({"ok": problems == 0, "checks": doctor_checks(text.getvalue())})
    return problems


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line and exit 2 like every
    other failure (argparse prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def json_flag() -> Parser:
    """The --json every command that prints data takes (a parent parser)."""
    p = Parser(add_help=False)
    p.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (progress and notes stay on stderr)"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="gpubus", description=__doc__, epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"gpubus {package_version()}")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    data = [json_flag()]

    up = sub.add_parser("up", help="embedded NATS + gateway + CPU node (+ GPU node with CUDA)")
    up.add_argument("--port", type=int)
    up.add_argument("--host")
    up.add_argument("--data-dir", type=Path)
    up.add_argument("--nats-port", type=int, default=0, help="0 = a free port (with --cluster: the first of N)")
    up.add_argument(
        "--cluster",
        type=int,
        default=1,
        choices=range(1, 6),
        metavar="N",
        help="run N embedded nats-servers as one JetStream cluster, replicas N (default 1: a single server)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on NATS (clients and routes) and HTTPS on the gateway, from a CA in <data-dir>/tls",
    )
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
        key.add_argument(
            "--api-key", help="a key with the node role; visible in ps, prefer --api-key-file or GPUBUS_API_KEY"
        )
        n.add_argument("--gateway-ca", type=Path, help="CA file that verifies the https gateway (GPUBUS_TLS_CA_FILE)")
        n.add_argument(
            "--gateway-fingerprint", help="or pin the gateway's certificate by SHA-256 (GPUBUS_GATEWAY_FINGERPRINT)"
        )
        n.add_argument(
            "--nats-ca", type=Path, help="CA of NATS; default: the one the gateway gives (GPUBUS_NATS_CA_FILE)"
        )
        n.add_argument(
            "--allow-insecure",
            action="store_true",
            help="allow plaintext to a non-loopback gateway or NATS (GPUBUS_ALLOW_INSECURE)",
        )
        if name == "gpu-node":
            n.add_argument("--device", choices=["auto", "cuda", "cpu"], help="cpu: tests only")
        else:
            n.add_argument("--shared", action="store_true", help="serve the shared pool (service identity)")
        n.set_defaults(fn=fn)

    keys = sub.add_parser("keys", help="API keys (admin)")
    ks = keys.add_subparsers(dest="keys_cmd", required=True)
    kc = ks.add_parser("create", parents=data)
    kc.add_argument("user")
    kc.add_argument("--role", action="append", choices=["user", "node"])
    kc.add_argument("--expires-days", type=float)
    kc.add_argument("--description")
    ks.add_parser("list", parents=data)
    kr = ks.add_parser("revoke", parents=data)
    kr.add_argument("key_id")
    keys.set_defaults(fn=cmd_keys)

    sm = sub.add_parser("submit", help="submit a file or URL", parents=data)
    sm.add_argument("target")
    sm.add_argument("--gpu", action="store_true")
    sm.add_argument("--wait", action="store_true")
    sm.add_argument("--format", choices=FORMATS, help="of the result with --wait (default text; json with --json)")
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
    jl = js.add_parser("list", parents=data)
    jl.add_argument("--status")
    jl.add_argument("--limit", type=int, default=50)
    for name in ("show", "cancel", "retry"):
        js.add_parser(name, parents=data).add_argument("job_id")
    jr = js.add_parser("result", parents=data)
    jr.add_argument("job_id")
    jr.add_argument("--format", choices=FORMATS, help="default text; json with --json")
    jobs.set_defaults(fn=cmd_jobs)

    st = sub.add_parser("status", help="live nodes and queues", parents=data)
    st.add_argument("--watch", action="store_true")
    st.set_defaults(fn=cmd_status)

    tls = sub.add_parser("tls", help="certificates for TLS (ops/tls.py)")
    ts = tls.add_subparsers(dest="tls_cmd", required=True)
    ti = ts.add_parser("init", help="a CA and a server certificate in DIR (kept if they exist and cover the names)")
    ti.add_argument("--dir", type=Path, default=Path("tls"))
    ti.add_argument("--name", action="append", default=[], help="a DNS name or IP the servers are reached at (repeat)")
    ti.set_defaults(fn=cmd_tls_init)

    sub.add_parser("doctor", help="check this machine and the configuration", parents=data).set_defaults(fn=cmd_doctor)
    na = sub.add_parser("nats-auth", help="print fresh NATS auth secrets for a deployment's .env")
    na.add_argument("--k8s", action="store_true", help="as the Kubernetes Secret `gpubus-nats` instead")
    na.set_defaults(fn=cmd_nats_auth)
    return p


def run(argv: list[str] | None = None) -> int:
    """The command's exit code. A failure a user can meet is one line on
    stderr and its code (ops.exits); an unknown one is a bug and raises."""
    try:
        args = build_parser().parse_args(argv)
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        code = int(args.fn(args) or ExitCode.OK)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except (Exception, KeyboardInterrupt) as e:
        failure = failure_of(e)
        if failure is None:
            raise
        if isinstance(e, BrokenPipeError):
            silence_stdout()
        if failure.message:
            print(f"error: {failure.message}", file=sys.stderr)
        return failure.code


def silence_stdout() -> None:
    """After the reader of stdout left, the interpreter's last flush would
    fail again and print a warning: point stdout at /dev/null instead."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> NoReturn:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
