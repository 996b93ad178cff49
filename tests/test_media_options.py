"""Media kinds and transcription options through the bus, with the real model."""

from __future__ import annotations

import asyncio
import hashlib
import json

import nats
import pytest

from bus import objects, topology
from bus.jobstore import JobStore
from bus.publisher import JobPublisher
from bus.queueing import queue_attempt
from bus.sealing import RecordSeal
from bus.settings import Settings
from schemas import names
from schemas.events import EventType
from schemas.jobs import JobRecord, StagedInput, TranscribeOptions, new_job_id, now
from schemas.languages import WHISPER_LANGUAGES
from schemas.names import Kind, Lane
from tests import busreader
from tests.harness import ADMIN_TOKEN, TESTDATA, submit_file, wait_job
from tests.media_files import make_video, make_video_only
from tests.test_formats import check_srt_syntax, check_vtt_syntax

pytestmark = pytest.mark.timeout(180)


def result(c, job_id: str, fmt: str = "json"):
    r = c.get(f"/api/v1/jobs/{job_id}/result", params={"format": fmt})
    assert r.status_code == 200, r.text
    return r.json() if fmt == "json" else r.text


@pytest.mark.parametrize("name,vcodec,acodec", [("talk.mkv", "mpeg4", "flac"), ("talk.webm", "libvpx", "libopus")])
def test_video_containers_use_their_audio_track(gateway, shared_cpu_node, user, tmp_path, name, vcodec, acodec):
    video = make_video(TESTDATA / "hello.wav", tmp_path / name, vcodec=vcodec, acodec=acodec)
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, video)
        final = wait_job(c, job["job_id"], timeout_s=120)
        assert final["status"] == "succeeded" and final["kind"] == "video", final
        assert "weather" in result(c, job["job_id"], "text").lower()


def test_video_without_audio_track_fails_with_no_audio_track(gateway, shared_cpu_node, user, tmp_path):
    video = make_video_only(tmp_path / "silent.mp4")
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, video)
        assert job["status"] == "queued"
        final = wait_job(c, job["job_id"], timeout_s=120)
    assert final["status"] == "failed" and final["error"]["code"] == "NO_AUDIO_TRACK", final
    assert "video" in final["error"]["message"]


def test_options_reach_the_engine_and_the_result_reports_everything(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    options = {"word_timestamps": True, "vad_filter": True, "initial_prompt": "Hello world.", "model": "tiny.en"}
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav", options=json.dumps(options))
        final = wait_job(c, job["job_id"], timeout_s=120)
        assert final["status"] == "succeeded", final
        assert final["options"]["vad_filter"] is True and final["options"]["model"] == "tiny.en"
        body = result(c, job["job_id"])
        # language was not given: detected (an English-only model reports en) and reported back
        assert body["language"] == "en" and 0 < body["language_probability"] <= 1
        assert body["duration"] == pytest.approx(8.31, abs=0.05)
        assert body["node_id"] == final["node_id"] and body["device"] == "cpu" and body["model"] == "tiny.en"
        assert body["real_time_factor"] > 0 and body["processing_s"] > 0
        words = [w for s in body["segments"] for w in s["words"]]
        assert len(words) >= 10 and all({"start", "end", "word"} <= w.keys() for w in words)
        assert final["summary"]["language"] == "en" and final["summary"]["model"] == "tiny.en"
        assert check_srt_syntax(result(c, job["job_id"], "srt")) == len(body["segments"])
        assert check_vtt_syntax(result(c, job["job_id"], "vtt")) == len(body["segments"])
        assert result(c, job["job_id"], "md").startswith("# Transcript\n")


def test_translate_task_is_recorded(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "numbers.wav", options=json.dumps({"task": "translate", "language": "en"}))
        assert wait_job(c, job["job_id"], timeout_s=120)["status"] == "succeeded"
        body = result(c, job["job_id"])
    assert body["task"] == "translate" and "report" in body["text"].lower()


def test_a_model_no_live_node_serves_is_refused_with_the_available_ones(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        with (TESTDATA / "hello.wav").open("rb") as f:
            r = c.post(
                "/api/v1/jobs", files={"file": ("hello.wav", f)}, data={"options": json.dumps({"model": "large-v3"})}
            )
        assert r.status_code == 422, r.text
        msg = r.json()["error"]["message"]
        assert "'large-v3' is not served" in msg and "tiny.en" in msg
        assert c.get("/api/v1/jobs").json()["jobs"] == []


def test_a_language_the_model_cannot_do_fails_the_job_clearly(gateway, shared_cpu_node, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        job = submit_file(c, TESTDATA / "hello.wav", options=json.dumps({"language": "de"}))
        final = wait_job(c, job["job_id"], timeout_s=120)
    assert final["status"] == "failed" and final["error"]["code"] == "UNSUPPORTED_LANGUAGE", final


def test_cli_flags_become_options_and_refusals_are_shown(gateway, shared_cpu_node, user, tmp_path):
    import subprocess
    import sys

    from tests.harness import base_env

    env = base_env(gateway.nats_url, gateway_url=gateway.url, api_key=gateway.create_key(user), data_dir=tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ops.cli", "submit", *args], env=env, capture_output=True, text=True, timeout=150
        )

    out = cli(str(TESTDATA / "hello.wav"), "--model", "large-v3")
    assert (
        out.returncode == 2 and "INVALID_INPUT" in out.stderr and "(HTTP 422)" in out.stderr
    )  # 2: usage (ops/exits.py)
    assert "available: tiny.en" in out.stderr
    out = cli("ftp://example.com/a.mp3")
    assert out.returncode == 2 and "URL_REFUSED" in out.stderr and "(HTTP 422)" in out.stderr
    out = cli(
        str(TESTDATA / "hello.wav"),
        "--wait",
        "--format",
        "json",
        "--word-timestamps",
        "--vad",
        "--task",
        "translate",
        "--prompt",
        "Hello.",
        "--language",
        "en",
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["task"] == "translate" and body["segments"][0]["words"]


# -- language codes: refused at the door, and failed once on a node --


def test_the_language_list_is_faster_whispers():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert WHISPER_LANGUAGES == frozenset(_LANGUAGE_CODES)


def test_a_language_whisper_does_not_know_is_refused_at_submit(gateway, user):
    key = gateway.create_key(user)
    with gateway.client(key) as c:
        with (TESTDATA / "hello.wav").open("rb") as f:
            r = c.post(
                "/api/v1/jobs", files={"file": ("hello.wav", f)}, data={"options": json.dumps({"language": "xx"})}
            )
        assert r.status_code == 422 and "'xx' is not a language Whisper knows" in r.json()["error"]["message"], r.text
        r = c.post("/api/v1/jobs", json={"url": "https://example.com/a.mp3", "options": {"language": "xx"}})
        assert r.status_code == 422, r.text
        assert c.get("/api/v1/jobs").json()["jobs"] == []


async def _queue_bypassing_the_gateway(nats_url: str, owner: str, options: TranscribeOptions) -> str:
    """A job as a gateway without the submit check would queue it: staged
    input, sealed record and message, through bus.queueing."""
    data = (TESTDATA / "hello.wav").read_bytes()
    job_id, t = new_job_id(), now()
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        seal = RecordSeal.from_secret(ADMIN_TOKEN)
        staged = StagedInput(
            bucket=names.files_bucket(owner),
            object_name=names.input_object(job_id, "hello.wav"),
            filename="hello.wav",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        await objects.put_bytes(js, staged.bucket, staged.object_name, data)
        rec = JobRecord(
            job_id=job_id,
            owner=owner,
            queue_owner=names.SHARED,
            kind=Kind.AUDIO,
            lane=Lane.CPU,
            routed_reason="test",
            created_at=t,
            updated_at=t,
            input=staged,
            options=options,
        )
        store = JobStore(await js.key_value(names.JOBS_BUCKET), seal, js=js)
        publisher = JobPublisher(js, seal, give_up_after_s=5, ensure_queue=topology.QueueMaker(js, Settings()))
        await queue_attempt(store, publisher, owner, job_id, 1, rec)
    finally:
        await nc.close()
    return job_id


def test_an_unknown_language_on_a_node_fails_once_with_a_clear_code(gateway, shared_cpu_node, user):
    # Given a job with a language no Whisper model knows that got past the gateway
    key = gateway.create_key(user)  # makes the owner's bucket
    job_id = asyncio.run(_queue_bypassing_the_gateway(gateway.nats_url, user, TranscribeOptions(language="xx")))
    with gateway.client(key) as c:
        # When the node runs it, then it fails for good with UNSUPPORTED_LANGUAGE
        final = wait_job(c, job_id, timeout_s=120)
    assert final["status"] == "failed" and final["error"]["code"] == "UNSUPPORTED_LANGUAGE", final
    assert final["attempts"] == 1 and "fallback" not in final, final
    # And it was delivered once (a nak would have redelivered it: a second `started`)
    started = [e for e in busreader.events(gateway.nats_url, user) if e.type is EventType.STARTED]
    assert len(started) == 1, started
