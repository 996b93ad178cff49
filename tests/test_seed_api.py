"""The older API's aliases: /process/file|url (wait, else 202) and /api/v1/ingest/file|url (202)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import TESTDATA, start_node, wait_job
from tests.media_server import MediaServer
from tests.test_formats import check_vtt_syntax

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    srv = MediaServer(TESTDATA).start()
    yield srv
    srv.stop()


def post_file(c, path: str, name: str = "hello.wav", **fields):
    with (TESTDATA / name).open("rb") as f:
        return c.post(path, files={"file": (name, f)}, data=fields)


def test_process_file_waits_and_answers_with_the_result(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        r = post_file(c, "/process/file", language="en", word_timestamps="true", timeout="120")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "succeeded" and body["job_id"] == r.headers["x-gpubus-job-id"]
        assert "weather" in body["result"]["text"].lower() and body["result"]["segments"][0]["words"]
        assert c.get(f"/api/v1/jobs/{body['job_id']}").json()["options"]["word_timestamps"] is True
        vtt = post_file(c, "/process/file", format="vtt", timeout="120")
        assert vtt.status_code == 200 and check_vtt_syntax(vtt.text) >= 1


def test_process_file_past_its_timeout_answers_202_with_the_job(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        r = post_file(c, "/process/file", "long.wav", timeout="0.2")
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] in ("queued", "running") and job["status_url"] == f"/api/v1/jobs/{job['job_id']}"
        assert wait_job(c, job["job_id"], timeout_s=120)["status"] == "succeeded"


def test_process_file_refuses_bad_fields_before_queueing(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        assert post_file(c, "/process/file", format="docx").status_code == 422
        assert post_file(c, "/process/file", vad_filter="maybe").status_code == 422
        assert post_file(c, "/process/file", task="summarise").status_code == 422
        assert c.get("/api/v1/jobs").json()["jobs"] == []


def test_ingest_file_is_asynchronous(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        r = post_file(c, "/api/v1/ingest/file", "numbers.wav", options='{"word_timestamps": true}')
        assert r.status_code == 202 and r.headers["location"] == r.json()["status_url"]
        final = wait_job(c, r.json()["job_id"], timeout_s=120)
        assert final["status"] == "succeeded" and final["options"]["word_timestamps"] is True


def test_url_aliases(gateway, server, user):
    key = gateway.create_key(user)
    node = start_node(gateway, "cpu", key=key, name=f"cpu-{user}", allow_private_urls="true")
    try:
        with gateway.client(key) as c:
            r = c.post("/process/url", json={"url": server.url("hello.wav"), "format": "text", "timeout": 120})
            assert r.status_code == 200 and "weather" in r.text.lower(), r.text
            r = c.post("/api/v1/ingest/url", json={"url": server.url("numbers.wav"), "language": "en"})
            assert r.status_code == 202 and r.json()["lane"] == "cpu"
            final = wait_job(c, r.json()["job_id"], timeout_s=120)
            assert final["status"] == "succeeded" and final["kind"] == "url" and final["options"]["language"] == "en"
            assert c.post("/process/url", json={"url": "file:///etc/passwd"}).status_code == 422
    finally:
        node.stop()
