"""Upload → JetStream → node → transcript, through real processes."""

from __future__ import annotations

import pytest

from tests.harness import TESTDATA, expected_text, start_node, submit_file, wait_job, words

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
