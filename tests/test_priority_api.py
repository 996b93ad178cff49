"""Priorities as clients meet them, against the session's real gateway:
the `priority` field and its defaults per endpoint, a key's
`max_priority`, a retry, and the CLI's flags. (Which job a node takes
next: tests/test_fairness.py.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_HEADERS, TESTDATA, base_env
from tests.test_up_and_cli import cli

pytestmark = pytest.mark.timeout(180)


def upload(c: httpx.Client, path: str = "/api/v1/jobs", **fields: str) -> httpx.Response:
    """hello.wav; to the job API with gpu "required" (no GPU node of this
    user runs, so the job waits where it is: no node races the test)."""
    if path == "/api/v1/jobs":
        fields.setdefault("gpu", "required")
    with (TESTDATA / "hello.wav").open("rb") as f:
        return c.post(path, files={"file": ("hello.wav", f)}, data=fields)


def priority_of(c: httpx.Client, r: httpx.Response) -> str:
    assert r.status_code in (200, 202), r.text
    job_id = r.headers.get("x-gpubus-job-id") or r.json()["job_id"]
    return c.get(f"/api/v1/jobs/{job_id}").json()["priority"]


def make_key(gateway, user: str, **body: Any) -> str:
    with gateway.admin() as a:
        r = a.post("/api/v1/auth/keys", json={"user_id": user, "roles": ["user"], **body})
        assert r.status_code == 201, r.text
        assert r.json()["max_priority"] == body.get("max_priority")
        return r.json()["api_key"]


def test_priority_defaults_per_endpoint_and_the_key_cap(gateway, user):
    """Given a key without a cap and one capped at normal: a job takes the
    priority it asks for, else its endpoint's default (normal; high on the
    synchronous older API), a capped key asking for high is refused with a
    clear 403 and gets its defaults lowered, and a retry keeps a job's
    priority within the retrying key's cap."""
    free, capped = make_key(gateway, user), make_key(gateway, user, max_priority="normal")
    with gateway.client(free) as c, gateway.client(capped) as cc:
        assert priority_of(c, upload(c)) == "normal"
        assert priority_of(c, upload(c, priority="low")) == "low"
        assert priority_of(c, upload(c, options='{"priority": "high"}')) == "high"
        bad = upload(c, priority="urgent")
        assert bad.status_code == 422 and "priority" in bad.json()["error"]["message"], bad.text
        clash = upload(c, priority="low", options='{"priority": "high"}')
        assert clash.status_code == 422, clash.text
        # the synchronous older API defaults to high (answering 202 when not done in `timeout`)
        assert priority_of(c, upload(c, "/process/file", timeout="0.01")) == "high"
        assert priority_of(c, upload(c, "/api/v1/ingest/file")) == "normal"

        refused = upload(cc, priority="high")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "PRIORITY_NOT_ALLOWED"
        assert "normal" in refused.json()["error"]["message"]
        assert priority_of(cc, upload(cc, "/process/file", timeout="0.01")) == "normal"
        assert priority_of(cc, upload(cc, priority="low")) == "low"

        high = upload(c, priority="high").json()["job_id"]
        assert c.post(f"/api/v1/jobs/{high}/cancel").status_code == 200
        retried = cc.post(f"/api/v1/jobs/{high}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["priority"] == "normal"  # lowered to the retrying key's cap
        for job_id in (r["job_id"] for r in c.get("/api/v1/jobs").json()["jobs"] if r["status"] == "queued"):
            c.post(f"/api/v1/jobs/{job_id}/cancel")


def test_the_cli_sets_a_keys_cap_and_a_jobs_priority(gateway, user, tmp_path):
    env = base_env(gateway.nats_url, gateway_url=gateway.url, data_dir=tmp_path)
    made = cli("keys", "create", user, "--max-priority", "normal", "--json", env=env)
    assert made.returncode == 0, made.stderr
    key = httpx.Response(200, content=made.stdout).json()
    assert key["max_priority"] == "normal"
    env["GPUBUS_API_KEY"] = key["api_key"]
    low = cli("submit", str(TESTDATA / "hello.wav"), "--priority", "low", "--gpu", "--json", env=env)
    assert low.returncode == 0, low.stderr
    job = httpx.Response(200, content=low.stdout).json()
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key['api_key']}"}) as c:
        assert c.get(f"/api/v1/jobs/{job['job_id']}").json()["priority"] == "low"
        c.post(f"/api/v1/jobs/{job['job_id']}/cancel")
    high = cli("submit", str(TESTDATA / "hello.wav"), "--priority", "high", env=env)
    assert high.returncode == 4 and "PRIORITY_NOT_ALLOWED" in high.stderr, high.stderr


def test_keys_list_shows_the_cap(gateway, user):
    make_key(gateway, user, max_priority="low")
    with httpx.Client(base_url=gateway.url, headers=ADMIN_HEADERS) as a:
        keys = [k for k in a.get("/api/v1/auth/keys").json()["keys"] if k["user_id"] == user]
    assert [k.get("max_priority") for k in keys] == ["low"]
