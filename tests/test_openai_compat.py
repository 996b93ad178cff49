"""The OpenAI-compatible endpoints, driven by the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from tests.harness import TESTDATA, Gateway, start_node
from tests.test_formats import check_srt_syntax, check_vtt_syntax

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def client(gateway, shared_cpu_node, user) -> Iterator[OpenAI]:
    c = OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.create_key(user), timeout=150, max_retries=0)
    yield c
    c.close()


def transcribe(client: OpenAI, name: str = "hello.wav", **kw):
    with (TESTDATA / name).open("rb") as f:
        return client.audio.transcriptions.create(model=kw.pop("model", "whisper-1"), file=f, **kw)


def test_json_default(client):
    r = transcribe(client)
    assert "weather" in r.text.lower()


def test_text_srt_vtt(client):
    assert "weather" in transcribe(client, response_format="text").lower()
    assert check_srt_syntax(transcribe(client, response_format="srt")) >= 1
    assert check_vtt_syntax(transcribe(client, response_format="vtt")) >= 1


def test_verbose_json_with_words(client):
    r = transcribe(
        client,
        "numbers.wav",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
        prompt="A phone message.",
        temperature=0.0,
    )
    assert r.language == "en" and r.duration == pytest.approx(8.74, abs=0.05)
    assert r.segments and r.segments[0].start >= 0 and "report" in r.text.lower()
    assert r.words and all(w.start <= w.end for w in r.words)
    assert any(w.word.lower().strip(".,") == "report" for w in r.words)
    # Whisper's own figures, not placeholders (0.0 would read as "certainly speech")
    for seg in r.segments:
        assert seg.tokens and seg.avg_logprob < 0 and seg.compression_ratio > 0 and 0 <= seg.no_speech_prob <= 1
        assert seg.temperature == 0.0 and seg.seek >= 0
    assert r.segments[0].no_speech_prob < 0.5  # the message itself is speech
    assert r.usage is not None and r.usage.type == "duration" and r.usage.seconds == 9


def test_translation(client):
    with (TESTDATA / "hello.wav").open("rb") as f:
        r = client.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
    assert r.task == "translate" and "weather" in r.text.lower()


def test_unknown_model_is_422_naming_the_fleets_models(client):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        transcribe(client, model="gpt-4o-transcribe")
    assert "tiny.en" in str(e.value)


def test_undecodable_upload_fails_with_the_jobs_code(client):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        transcribe(client, "garbage.bin")
    # The job's own error code, in OpenAI's error shape (random bytes: PyAV finds no audio in them)
    assert e.value.code in ("DECODE_FAILED", "NO_AUDIO_TRACK"), e.value.body
    assert "failed" in e.value.message


def test_wrong_key_is_401(gateway):
    c = OpenAI(base_url=f"{gateway.url}/v1", api_key="gpb_not_a_real_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        transcribe(c)


def test_runs_on_the_owners_gpu_node_through_the_bus(gateway, user):
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    try:
        c = OpenAI(base_url=f"{gateway.url}/v1", api_key=key, timeout=150, max_retries=0)
        assert "weather" in transcribe(c).text.lower()
        with gateway.client(key) as h:
            [job] = h.get("/api/v1/jobs").json()["jobs"]
        assert job["lane"] == "gpu" and job["status"] == "succeeded" and job["node_id"].startswith("gpu-")
    finally:
        node.stop()


def test_a_job_over_the_sync_timeout_answers_504_and_goes_on(nats_server, workdir, user):
    gw = Gateway.on(nats_server, workdir, sync_timeout=1).start()
    try:
        key = gw.create_key(user)
        c = OpenAI(base_url=f"{gw.url}/v1", api_key=key, timeout=60, max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            transcribe(c, "long.wav")
        assert e.value.status_code == 504 and e.value.code == "STILL_RUNNING"
        with gw.client(key) as h:
            [job] = h.get("/api/v1/jobs").json()["jobs"]
        assert job["job_id"] in str(e.value) and job["status"] in ("queued", "running", "succeeded")
    finally:
        gw.stop()


def test_stream_yields_deltas_then_the_whole_text(client, gateway):
    """`stream=True` with the official client: a delta per segment as the
    node finishes it, then `done` with exactly the non-streamed text."""
    plain = transcribe(client, "long.wav").text
    with (TESTDATA / "long.wav").open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2, events
    assert [e.type for e in events[-1:]] == ["transcript.text.done"] and len(events) == len(deltas) + 1
    assert events[-1].text == plain
    assert "".join(d.delta for d in deltas).strip() == plain


def test_stream_of_a_failed_job_raises(client):
    with (TESTDATA / "garbage.bin").open("rb") as f, pytest.raises(openai.APIError) as e:
        list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    assert "failed" in e.value.message
