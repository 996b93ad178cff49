"""The `gpubus` CLI as scripts and people meet it: run as a subprocess
against the session's real gateway, it prints one JSON document with
--json, fails in one line with a documented exit code, and does not cut ids
or paint escape codes into pipes."""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import pty
import signal
import socket
import ssl
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from ops import tls
from ops.client import reason, unreachable
from ops.embedded_nats import free_port
from ops.exits import ExitCode
from tests.harness import TESTDATA, base_env, ctrl_c_at_default, submit_file, wait_job, wait_until
from tests.test_up_and_cli import cli

pytestmark = pytest.mark.timeout(180)

JOB_ID_LEN = 33  # "j" and 32 hex digits (schemas.jobs.new_job_id)
ANSI_ESCAPE = "\x1b["


def env_for(gateway, key: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: this gateway and key, and a data dir of the
    test's own (no stray up.json supplies another key)."""
    settings = {"gateway_url": gateway.url, "data_dir": tmp_path, **({"api_key": key} if key else {})}
    return {**base_env(gateway.nats_url, **settings), **extra}


def assert_one_line_error(r: subprocess.CompletedProcess, code: ExitCode) -> str:
    """The failure contract: the exit code, one `error:` line on stderr,
    nothing on stdout, no traceback. Returns the line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == "", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_version_is_the_installed_package_version():
    r = cli("--version", env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"gpubus {metadata.version('gpubus')}\n"


def test_help_documents_the_exit_codes():
    r = cli("--help", env=dict(os.environ))
    assert r.returncode == 0
    for code in ExitCode:
        assert f"{int(code):>3}  " in r.stdout, code


def test_a_reader_that_leaves_early_is_quiet(gateway, user, tmp_path):
    # Given stdout is a pipe whose reader has gone (`gpubus jobs list | head -0`)
    key = gateway.create_key(user)
    for unbuffered, args in (("1", ["jobs", "list", "--json"]), ("", ["jobs", "list", "--json"]), ("", ["status"])):
        env = env_for(gateway, key, tmp_path, PYTHONUNBUFFERED=unbuffered)  # the write fails, or the last flush
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            r = subprocess.run(
                [sys.executable, "-m", "ops.cli", *args],
                env=env,
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write_end)
        # Then it stops with 141 like any Unix tool, and says nothing
        assert r.returncode == ExitCode.BROKEN_PIPE and r.stderr == "", (args, r.stderr)


def test_submit_json_is_one_document_with_the_job_id(gateway, shared_cpu_node, user, tmp_path):
    env = env_for(gateway, gateway.create_key(user), tmp_path)
    # Without --wait: the job record
    r = cli("submit", str(TESTDATA / "hello.wav"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert len(job["job_id"]) == JOB_ID_LEN and job["status"] == "queued"
    # With --wait: the final record and the result's JSON, the progress on stderr
    r = cli("submit", str(TESTDATA / "hello.wav"), "--wait", "--json", env=env)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["job"]["status"] == "succeeded" and len(done["job"]["job_id"]) == JOB_ID_LEN
    assert "weather" in json.dumps(done["result"]).lower()
    assert "queued on cpu" in r.stderr
    # And the other commands that print data print JSON too
    listed = json.loads(cli("jobs", "list", "--json", env=env).stdout)["jobs"]
    assert {job["job_id"], done["job"]["job_id"]} <= {j["job_id"] for j in listed}
    assert json.loads(cli("jobs", "show", job["job_id"], "--json", env=env).stdout)["job_id"] == job["job_id"]
    result = cli("jobs", "result", done["job"]["job_id"], "--json", env=env)
    assert json.loads(result.stdout) == done["result"], result.stderr
    status = json.loads(cli("status", "--json", env=env).stdout)
    assert {"live_nodes", "consumers", "recent_failures"} <= status.keys()


def test_keys_and_doctor_json_are_one_document_each(gateway, user, tmp_path):
    env = env_for(gateway, None, tmp_path)  # the admin token of base_env
    created = cli("keys", "create", user, "--role", "user", "--json", env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["api_key"].startswith("gpb_")
    listed = cli("keys", "list", "--json", env=env)
    assert key["key_id"] in listed.stdout and json.loads(listed.stdout), listed.stderr
    doctor = cli("doctor", "--json", env=env)
    report = json.loads(doctor.stdout)
    assert doctor.returncode == (0 if report["ok"] else 1), doctor.stderr
    assert {"nats-server", "gateway"} <= {c["name"] for c in report["checks"]}


def test_json_with_another_format_is_a_usage_error(gateway, user, tmp_path):
    env = env_for(gateway, gateway.create_key(user), tmp_path)
    r = cli("jobs", "result", "j" + "0" * 32, "--json", "--format", "srt", env=env)
    assert "--format srt" in assert_one_line_error(r, ExitCode.USAGE)


def test_a_missing_file_is_one_line_and_not_found(gateway, user, tmp_path):
    env = env_for(gateway, gateway.create_key(user), tmp_path)
    r = cli("submit", str(tmp_path / "no-such.wav"), "--wait", env=env)
    assert "no such file" in assert_one_line_error(r, ExitCode.NOT_FOUND)


def test_bad_arguments_are_one_line_and_usage(tmp_path):
    r = cli("submit", env=dict(os.environ))
    assert "required: target" in assert_one_line_error(r, ExitCode.USAGE)
    r = cli("jobs", "list", "--limit", "many", env=dict(os.environ))
    assert_one_line_error(r, ExitCode.USAGE)


def test_an_unreachable_gateway_is_one_line_and_its_own_code(gateway, user, tmp_path):
    # Given a port on 127.0.0.1 where nothing listens
    env = env_for(gateway, "gpb_whatever", tmp_path, GPUBUS_GATEWAY_URL=f"http://127.0.0.1:{free_port()}")
    for args in (["jobs", "list"], ["status"], ["submit", str(TESTDATA / "hello.wav")]):
        line = assert_one_line_error(cli(*args, env=env), ExitCode.UNREACHABLE)
        assert "connection refused" in line, args


def test_unreachable_names_the_cause_it_wraps():
    # DNS without asking a resolver: the chain httpx builds around a failed lookup
    dns = httpx.ConnectError("[Errno -2] Name or service not known")
    dns.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert reason(dns) == "host name not resolved (DNS: Name or service not known)"
    assert reason(httpx.ReadTimeout("read")) == "timed out"
    assert str(unreachable("http://h:1", ConnectionRefusedError())).startswith("cannot reach the gateway at http://h:1")


@pytest.fixture
def https_server_of_an_unknown_ca(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 whose certificate no trust store knows."""
    files = tls.load_or_create(tmp_path / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_gateway_failing_tls_verification_is_unreachable(gateway, https_server_of_an_unknown_ca, tmp_path):
    env = env_for(gateway, "gpb_whatever", tmp_path, GPUBUS_GATEWAY_URL=https_server_of_an_unknown_ca)
    line = assert_one_line_error(cli("jobs", "list", env=env), ExitCode.UNREACHABLE)
    assert "TLS verification failed" in line


def test_a_wrong_key_is_the_auth_code_with_the_gateways_error(gateway, tmp_path):
    env = env_for(gateway, "gpb_not_a_key_anyone_has", tmp_path)
    line = assert_one_line_error(cli("jobs", "list", "--json", env=env), ExitCode.AUTH)
    assert "UNAUTHORIZED" in line and "HTTP 401" in line


def test_an_unknown_job_is_not_found(gateway, user, tmp_path):
    env = env_for(gateway, gateway.create_key(user), tmp_path)
    line = assert_one_line_error(cli("jobs", "show", "j" + "0" * 32, env=env), ExitCode.NOT_FOUND)
    assert "NOT_FOUND" in line


def test_a_failed_job_waited_for_is_the_job_failed_code(gateway, shared_cpu_node, user, tmp_path):
    env = env_for(gateway, gateway.create_key(user), tmp_path)
    r = cli("submit", str(TESTDATA / "garbage.bin"), "--wait", "--json", env=env)
    assert r.returncode == ExitCode.JOB_FAILED and "Traceback" not in r.stderr, r.stderr
    assert "DECODE_FAILED" in r.stderr.strip().splitlines()[-1]
    doc = json.loads(r.stdout)  # scripts still get the record, with its error
    assert doc["job"]["status"] == "failed" and doc["result"] is None


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


def test_ctrl_c_while_waiting_leaves_the_job_and_says_so(gateway, shared_cpu_node, user, tmp_path):
    # Given `submit --wait` of a long job, waiting
    key = gateway.create_key(user)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "submit", str(TESTDATA / "long.wav"), "--wait"],
        env=env_for(gateway, key, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_at_default,
    )
    with gateway.client(key) as c:
        wait_until(lambda: c.get("/api/v1/jobs").json()["jobs"], timeout_s=60, what="the job")
        job_id = c.get("/api/v1/jobs").json()["jobs"][0]["job_id"]
        time.sleep(1)  # into the wait, past the upload
        # When Ctrl-C comes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        # Then it exits 130 with one line naming the job, which goes on
        assert proc.returncode == ExitCode.INTERRUPTED and "Traceback" not in err and out == "", err
        assert f"gpubus jobs cancel {job_id}" in err.strip().splitlines()[-1]
        assert c.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
        c.post(f"/api/v1/jobs/{job_id}/cancel")  # not the shared node's work for the next tests


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The CLI with stdout on a pseudo-terminal (200 columns): what a
    person sees, escape codes included."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", *args],
        env=env,
        stdout=follower,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
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
