"""`gpubus`: run the system, its parts, and talk to a gateway."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from ops import models
from ops.client_commands import FORMATS, cmd_doctor, cmd_jobs, cmd_keys, cmd_status, cmd_submit
from ops.exits import (
    ExitCode,
    UsageError,
    epilog,
    failure_of,
)
from ops.logs import configure_logging
from ops.service_commands import (
    cmd_cpu_node,
    cmd_gateway,
    cmd_gpu_node,
    cmd_nats_auth,
    cmd_tls_init,
    cmd_up,
)


def package_version() -> str:
    """The installed distribution's version, the one pip and bug reports
    speak of (not a second copy in the source that could drift)."""
    try:
        return metadata.version("gpubus")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


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
        "--nats-monitor-port",
        type=int,
        default=0,
        help="NATS monitoring (/varz, /jsz, /connz) on 127.0.0.1; 0 = a free port (with --cluster: free ports)",
    )
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
    kc.add_argument(
        "--webhook-url", help="where this key's jobs report their terminal states unless a job names its own"
    )
    kc.add_argument("--description")
    kc.add_argument(
        "--max-priority", choices=["high", "normal", "low"], help="the highest priority the key may ask for"
    )
    ks.add_parser("list", parents=data)
    kr = ks.add_parser("revoke", parents=data)
    kr.add_argument("key_id")
    keys.set_defaults(fn=cmd_keys)

    sm = sub.add_parser("submit", help="submit a file or URL", parents=data)
    sm.add_argument("target")
    sm.add_argument("--gpu", action="store_true")
    sm.add_argument("--wait", action="store_true")
    sm.add_argument("--format", choices=FORMATS, help="of the result with --wait (default text; json with --json)")
    sm.add_argument(
        "--kind",
        choices=["audio", "video", "document", "image", "web"],
        help="default: from the file's bytes; web: fetch the URL as a page (main text), not as media",
    )
    sm.add_argument("--language", help="e.g. en; default: detected")
    sm.add_argument("--task", choices=["transcribe", "translate"])
    sm.add_argument("--model", help="one a live node serves (see `gpubus status`)")
    sm.add_argument("--prompt", help="initial prompt: names, spelling, style")
    sm.add_argument("--word-timestamps", dest="word_timestamps", action="store_true")
    sm.add_argument("--vad", dest="vad_filter", action="store_true", help="skip silence (Silero VAD)")
    sm.add_argument("--diarize", action="store_true", help="who spoke when: a speaker on every segment and word")
    sm.add_argument("--speakers", type=int, metavar="N", help="exactly N speakers (implies --diarize)")
    sm.add_argument("--min-speakers", dest="min_speakers", type=int, metavar="N", help="implies --diarize")
    sm.add_argument("--max-speakers", dest="max_speakers", type=int, metavar="N", help="implies --diarize")
    sm.add_argument("--options", help="options JSON")
    sm.add_argument(
        "--priority", choices=["high", "normal", "low"], help="taken before the owner's lower ones (default normal)"
    )
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
    models.add_parser(sub)
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
