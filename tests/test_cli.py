"""The `gpubus` CLI as scripts and people meet it: run as a subprocess
against the session's real gateway, it does not cut ids or paint escape
codes into pipes."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.harness import TESTDATA, base_env, submit_file, wait_job
from tests.test_up_and_cli import cli

pytestmark = pytest.mark.timeout(180)

JOB_ID_LEN = 33  # "j" and 32 hex digits (schemas.jobs.new_job_id)
ANSI_ESCAPE = "\x1b["


def env_for(gateway, key: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: this gateway and key, and a data dir of the
    test's own (no stray up.json supplies another key)."""
    settings = {"gateway_url": gateway.url, "data_dir": tmp_path, **({"api_key": key} if key else {})}
    return {**base_env(gateway.nats_url, **settings), **extra}


def test_piped_status_and_jobs_show_whole_ids(gateway, shared_cpu_node, user, tmp_path):
    # Given a failed job (it shows in status' recent failures) and a succeeded one
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        failed = submit_file(c, TESTDATA / "garbage.bin")["job_id"]
        ok = submit_file(c, TESTDATA / "hello.wav")["job_id"]
        wait_job(c, failed)
        wait_job(c, ok)
    env = env_for(gateway, key, tmp_path, COLUMNS="80")
    # When status and jobs list write into a pipe
    status = cli("status", env=env)
    listing = cli("jobs", "list", env=env)
    # Then every id is whole, on one line, and nothing is painted
    assert status.returncode == 0 and listing.returncode == 0, status.stderr + listing.stderr
    assert len(failed) == JOB_ID_LEN
    assert any(failed in line for line in status.stdout.splitlines()), status.stdout
    assert {failed, ok} <= {line.split()[0] for line in listing.stdout.splitlines()}
    assert ANSI_ESCAPE not in status.stdout + listing.stdout


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The CLI with stdout on a pseudo-terminal (200 columns): what a
    person sees, escape codes included."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the CLI closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


@pytest.mark.parametrize(("no_color", "painted"), [(None, True), ("", True), ("1", False)])
def test_no_color_on_a_terminal_leaves_no_escape_codes(gateway, user, tmp_path, no_color, painted):
    env = env_for(gateway, gateway.create_key(user), tmp_path, TERM="xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):
        env.pop(name, None)
    if no_color is not None:
        env["NO_COLOR"] = no_color  # https://no-color.org: only a non-empty value counts
    out = run_on_a_terminal(["status"], env)
    assert "live nodes" in out
    assert (ANSI_ESCAPE in out) == painted, repr(out[:300])
