"""The `gpubus` commands that talk to a gateway as a client: keys, submit,
jobs, status, doctor."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

from bus.settings import Settings
from ops.cli_support import print_json, readable_file
from ops.client import GatewayClient, unreachable
from ops.exits import (
    JobUnsuccessful,
    NotConfigured,
    UsageError,
    WaitInterrupted,
)

FORMATS = ["json", "text", "srt", "vtt", "tsv", "md", "rttm"]  # rttm: diarized jobs only


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


def cmd_keys(args: argparse.Namespace) -> None:
    c = _client(Settings(), admin=True)
    if args.keys_cmd == "create":
        roles = args.role or ["user"]
        body = {"user_id": args.user, "roles": roles, "description": args.description or ""}
        if args.expires_days:
            body["expires_days"] = args.expires_days
        if args.webhook_url:
            body["webhook_url"] = args.webhook_url
        if args.max_priority:
            body["max_priority"] = args.max_priority
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
    flags = {
        "language": args.language,
        "task": args.task,
        "model": args.model,
        "initial_prompt": args.prompt,
        "num_speakers": args.speakers,
        "min_speakers": args.min_speakers,
        "max_speakers": args.max_speakers,
        "priority": args.priority,
    }
    options.update({k: v for k, v in flags.items() if v is not None})
    options.update({k: True for k in ("word_timestamps", "vad_filter", "diarize") if getattr(args, k)})
    if any(options.get(k) is not None for k in ("num_speakers", "min_speakers", "max_speakers")):
        options["diarize"] = True  # a speaker count says what is wanted
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
        job = c.submit_json(
            {"url": target, "gpu": args.gpu, "options": options} | ({"kind": args.kind} if args.kind else {})
        )
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
        listing = c.jobs(args.status, args.limit)
        if args.json:
            print_json(listing)
            return
        if not listing.get("complete", True):
            print(f"(among your latest jobs only: {listing['total']} in all)", file=sys.stderr)
        for j in listing["jobs"]:  # whole ids, never cut: they are what the other commands take
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
