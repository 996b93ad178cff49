"""The CLI's exit codes, and the one map from an error to its code and line.

People read one line on stderr; scripts branch on the exit code (is it worth
retrying? is the key wrong? does the job exist?). So every failure a user
can cause or meet is a typed error here or in `ops.client`, and
`failure_of` is the only place that turns one into a code and a message.
Anything it does not know is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydantic import ValidationError

from bus.tls import InsecureConnection, UntrustedCertificate
from ops.client import ApiError, GatewayUnreachable
from schemas.errors import GpubusError


class ExitCode(IntEnum):
    """Stable: scripts depend on these numbers (EXIT_CODE_DOCS says what
    each means, in `gpubus --help`; the README repeats it)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH = 4
    NOT_FOUND = 5
    JOB_FAILED = 6
    INTERRUPTED = 130
    BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for any Unix tool whose reader left


EXIT_CODE_DOCS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "any other error (the gateway refused the request: 409, 413, 415, 429, 5xx; a file that cannot be read)",
    ExitCode.USAGE: "bad arguments, options or settings (also the gateway's 400/422, and no gateway configured)",
    ExitCode.UNREACHABLE: "gateway unreachable: connection refused, DNS, TLS verification, timeout, or 502/503 (retry later)",
    ExitCode.AUTH: "no, wrong, expired or revoked key, or the key may not do this (401/403)",
    ExitCode.NOT_FOUND: "no such job or key (404), or no such local file",
    ExitCode.JOB_FAILED: "`submit --wait`: the job failed or was cancelled (its error code is on stderr)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); a job being waited for goes on",
    ExitCode.BROKEN_PIPE: "stdout was closed early (`| head`); nothing more is printed",
}


def epilog() -> str:
    """The exit codes as `gpubus --help` shows them (generated, so the
    help cannot drift from the codes)."""
    rows = "\n".join(f"  {int(code):>3}  {doc}" for code, doc in EXIT_CODE_DOCS.items())
    return f"exit codes:\n{rows}\n\nerrors are one line on stderr; --json output is one JSON document on stdout."


class UsageError(GpubusError):
    """The command line or the environment asks for something that cannot work."""

    code = "USAGE"


class NotConfigured(UsageError):
    """No gateway to talk to: neither GPUBUS_GATEWAY_URL nor a local `gpubus up`."""

    code = "NOT_CONFIGURED"


class MissingFile(GpubusError):
    """A local file named on the command line does not exist."""

    code = "FILE_NOT_FOUND"


class UnreadableFile(GpubusError):
    """A local file exists but cannot be read (permissions, a directory)."""

    code = "FILE_UNREADABLE"


class JobUnsuccessful(GpubusError):
    """A job the CLI waited for ended failed, cancelled or expired."""

    code = "JOB_FAILED"

    def __init__(self, job: dict[str, Any]) -> None:
        err = job.get("error") or {}
        super().__init__(f"job {job['job_id']} {job['status']}: {err.get('code')}: {err.get('message')}")
        self.job = job


class WaitInterrupted(GpubusError):
    """Ctrl-C while waiting for a job: the CLI stops, the job does not, so
    the line says how to find or cancel it."""

    code = "INTERRUPTED"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"interrupted; job {job_id} goes on (gpubus jobs show {job_id}; gpubus jobs cancel {job_id})")


@dataclass(frozen=True)
class Failure:
    code: ExitCode
    message: str  # "": nothing to say (a closed pipe)


def _http_exit(status: int) -> ExitCode:
    """What a gateway status means to a script."""
    if status in (400, 422):
        return ExitCode.USAGE
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (502, 503):
        return ExitCode.UNREACHABLE
    return ExitCode.ERROR


# Typed errors whose code is their class alone, most specific first.
_BY_TYPE: list[tuple[type[BaseException], ExitCode]] = [
    (JobUnsuccessful, ExitCode.JOB_FAILED),
    (WaitInterrupted, ExitCode.INTERRUPTED),
    (UsageError, ExitCode.USAGE),
    (InsecureConnection, ExitCode.USAGE),  # plaintext to a remote gateway: the URL or settings must change
    (MissingFile, ExitCode.NOT_FOUND),
    (GatewayUnreachable, ExitCode.UNREACHABLE),
    (UntrustedCertificate, ExitCode.UNREACHABLE),  # a pinned fingerprint that does not match
]


def failure_of(exc: BaseException) -> Failure | None:
    """The exit code and the one line for an error a user can meet; None for
    anything else (a bug: the caller lets its traceback show)."""
    if isinstance(exc, KeyboardInterrupt):
        return Failure(ExitCode.INTERRUPTED, "interrupted")
    if isinstance(exc, BrokenPipeError):  # the reader has what it wanted: not worth a line
        return Failure(ExitCode.BROKEN_PIPE, "")
    if isinstance(exc, ApiError):
        return Failure(_http_exit(exc.status), f"{exc.code}: {exc.detail} (HTTP {exc.status})")
    if isinstance(exc, ValidationError):  # Settings from GPUBUS_* variables
        first = exc.errors()[0]
        where = "_".join(str(p) for p in first.get("loc", ())).upper()
        return Failure(ExitCode.USAGE, f"bad setting GPUBUS_{where}: {first.get('msg')}")
    for cls, code in _BY_TYPE:
        if isinstance(exc, cls):
            return Failure(code, _message(exc))
    if isinstance(exc, GpubusError):  # a node that cannot start (no model, no CUDA), TLS files missing...
        return Failure(ExitCode.ERROR, f"{exc.code}: {exc.message}")
    if isinstance(exc, TimeoutError):
        return Failure(ExitCode.ERROR, str(exc) or "timed out")
    return None


def _message(exc: BaseException) -> str:
    """A gpubus error keeps its code: scripts and operators grep for it."""
    return f"{exc.code}: {exc.message}" if isinstance(exc, GpubusError) else str(exc)
