"""Idempotency-Key on the submitting endpoints: a retried submit is the same
job, atomically, across concurrent tries; a duplicate's upload is not kept;
a key reused for another request is refused (422)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.busreader import input_objects
from tests.harness import TESTDATA

pytestmark = pytest.mark.timeout(180)


def _post_file(c, key: str | None, path=TESTDATA / "hello.wav", url: str = "/api/v1/jobs", **data: str):
    headers = {"Idempotency-Key": key} if key is not None else {}
    with path.open("rb") as f:
        return c.post(url, files={"file": (path.name, f)}, data=data, headers=headers)


def test_a_retried_upload_is_the_same_job_and_leaves_one_input(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        first = _post_file(c, "upload-1")
        again = _post_file(c, "upload-1")
        assert first.status_code == again.status_code == 202, (first.text, again.text)
        assert first.json()["job_id"] == again.json()["job_id"]
        other = _post_file(c, None)  # no key: a new job, as before
        assert other.json()["job_id"] != first.json()["job_id"]
        jobs = c.get("/api/v1/jobs").json()["jobs"]
    assert len(jobs) == 2
    # the duplicate staged its upload to fingerprint it, and dropped it
    staged = input_objects(gateway.nats_url, user)
    assert sorted(o.split("/")[1] for o in staged) == sorted(j["job_id"] for j in jobs), staged


def test_concurrent_tries_with_one_key_make_one_job(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _post_file(c, "burst"), range(6)))
        assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
        assert len({a.json()["job_id"] for a in answers}) == 1
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 1
    assert len(input_objects(gateway.nats_url, user)) == 1


def test_a_key_reused_for_another_request_is_422(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        assert _post_file(c, "k1").status_code == 202
        for r in (
            _post_file(c, "k1", TESTDATA / "numbers.wav"),  # another file
            _post_file(c, "k1", options=json.dumps({"language": "en"})),  # other fields
            _post_file(c, "k1", url="/api/v1/ingest/file"),  # another endpoint
        ):
            assert r.status_code == 422 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", r.text
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 1
        assert _post_file(c, "x" * 256).status_code == 422  # over 255 characters
    # keys are per owner: another user's same key is their own
    other = gateway.create_key(f"{user}-b")
    with gateway.client(other) as c:
        assert _post_file(c, "k1").status_code == 202
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 1


def test_a_refused_submission_gives_its_key_back(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        refused = _post_file(c, "k2", options=json.dumps({"model": "large-v3"}))  # no node serves it
        assert refused.status_code == 422
        assert _post_file(c, "k2").status_code == 202  # the key is free again: not "reused"
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 1
    assert len(input_objects(gateway.nats_url, user)) == 1


def test_json_and_synchronous_endpoints_take_keys_too(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    body = {"url": "http://127.0.0.1:9/not-there.mp3"}  # the node's fetch fails; the job exists
    with gateway.client(key) as c:
        a = c.post("/api/v1/ingest/url", json=body, headers={"Idempotency-Key": "u1"})
        b = c.post("/api/v1/ingest/url", json=body, headers={"Idempotency-Key": "u1"})
        assert a.status_code == b.status_code == 202 and a.json()["job_id"] == b.json()["job_id"]
        r = c.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "u1"})  # another endpoint
        assert r.status_code == 422 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
        first = _post_file(c, "p1", url="/process/file", format="text")
        again = _post_file(c, "p1", url="/process/file", format="text")
        assert first.status_code == again.status_code == 200 and "weather" in again.text.lower()
        assert first.headers["x-gpubus-job-id"] == again.headers["x-gpubus-job-id"]
        assert len(c.get("/api/v1/jobs").json()["jobs"]) == 2
