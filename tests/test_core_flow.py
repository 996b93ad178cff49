"""Upload → JetStream → node → transcript, through real processes."""

from __future__ import annotations

import pytest

from tests.harness import TESTDATA, expected_text, start_node, submit_file, wait_job, words
from tests.media_files import wav_of_seconds

pytestmark = pytest.mark.timeout(120)


def test_audio_on_gpu_node_end_to_end(gateway, user):
    # Given a user with a GPU node (on the CPU: no GPU here)
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    try:
        with gateway.client(key) as c:
            # When they upload speech with gpu=true
            job = submit_file(c, TESTDATA / "hello.wav", gpu=True)
            # Then it is routed to their GPU lane and transcribed there
            assert job["lane"] == "gpu" and job["routed_reason"] == "gpu_requested"
            assert job["status"] == "queued" and job["status_url"].endswith(job["job_id"])
            final = wait_job(c, job["job_id"])
            assert final["status"] == "succeeded", final
            assert final["attempts"] == 1 and final["node_id"].startswith("gpu-")
            assert final["started_at"] <= final["finished_at"]
            result = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=json").json()
            assert {"text", "language", "duration", "segments"} <= result.keys()
            assert result["segments"] and {"start", "end", "text"} <= result["segments"][0].keys()
            assert len(words(result["text"]) & words(expected_text("hello"))) >= 8, result["text"]
            text = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=text").text
            assert "weather" in text.lower()
            srt = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=srt")
            assert srt.status_code == 200 and srt.text.startswith("1\n00:00:0")
            vtt = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=vtt").text
            assert vtt.startswith("WEBVTT\n\n00:00:0")
    finally:
        node.stop()


def test_video_without_gpu_node_goes_to_shared_cpu(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.mp4", gpu=True)
        assert job["lane"] == "cpu" and job["routed_reason"] == "no_live_gpu_node"
        final = wait_job(c, job["job_id"])
        assert final["status"] == "succeeded", final
        assert final["kind"] == "video"
        assert "weather" in c.get(f"/api/v1/jobs/{job['job_id']}/result?format=text").text.lower()


def test_job_listing_is_per_user(gateway, shared_cpu_node, user):
    key_a = gateway.create_key(user)
    key_b = gateway.create_key(user + "-b")
    with gateway.client(key_a) as a, gateway.client(key_b) as b:
        job = submit_file(a, TESTDATA / "numbers.wav")
        assert [j["job_id"] for j in a.get("/api/v1/jobs").json()["jobs"]] == [job["job_id"]]
        assert b.get("/api/v1/jobs").json()["jobs"] == []
        assert b.get(f"/api/v1/jobs/{job['job_id']}").status_code == 404
        assert b.get(f"/api/v1/jobs/{job['job_id']}/result").status_code == 404
        wait_job(a, job["job_id"])


def test_long_poll_answers_when_the_job_finishes_and_not_before(gateway, shared_cpu_node, user, tmp_path):
    key = gateway.create_key(user)
    speech = wav_of_seconds(TESTDATA / "long.wav", 160, tmp_path / "lecture.wav")
    with gateway.client(key) as c:
        # Given a job of 160 s of speech queued behind another (seconds of work for the
        # one-at-a-time shared CPU node; uploads are capped at 8 MiB here)
        ahead = submit_file(c, speech, gpu=False)
        job = submit_file(c, speech, gpu=False)
        # When a client long-polls for less time than the job takes
        early = c.get(f"/api/v1/jobs/{job['job_id']}", params={"wait": 0.5})
        early_result = c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"wait": 0.5})
        # Then it gets the record as it stands, and no result yet
        assert early.status_code == 200 and early.json()["status"] in ("queued", "running")
        assert early_result.status_code == 409 and early_result.json()["error"]["code"] == "CONFLICT"
        # When it long-polls for the result with time to spare
        r = c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"wait": 60, "format": "json"}, timeout=90)
        # Then one request brings the transcript, and the record agrees
        assert r.status_code == 200, r.text
        assert len(words(r.json()["text"]) & words(expected_text("long"))) >= 20 and r.json()["duration"] > 150
        assert c.get(f"/api/v1/jobs/{job['job_id']}", params={"wait": 60}).json()["status"] == "succeeded"
        assert c.get(f"/api/v1/jobs/{ahead['job_id']}", params={"wait": 60}).json()["status"] == "succeeded"
        # And a wait out of range, or for a job that does not exist, is refused at once
        bad = c.get(f"/api/v1/jobs/{job['job_id']}", params={"wait": 61})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_INPUT"
        missing = c.get("/api/v1/jobs/j" + "0" * 32 + "/result", params={"wait": 60})
        assert missing.status_code == 404
