"""The OpenAI-compatible endpoints, driven by the official `openai` client
with its default settings (2 retries, 600 s time-out): the same answers,
the same typed exceptions, and one job per call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import TESTDATA, Gateway, start_node, wait_until
from tests.media_files import silence_wav, wav_of_seconds
from tests.test_formats import check_srt_syntax, check_vtt_syntax

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def key(gateway, shared_cpu_node, user) -> str:
    return gateway.create_key(user)


@pytest.fixture
def client(gateway, key) -> Iterator[OpenAI]:
    c = OpenAI(base_url=f"{gateway.url}/v1", api_key=key)
    yield c
    c.close()


def transcribe(client: OpenAI, name: str | Path = "hello.wav", **kw):
    path = name if isinstance(name, Path) else TESTDATA / name
    with path.open("rb") as f:
        return client.audio.transcriptions.create(model=kw.pop("model", "whisper-1"), file=f, **kw)


def jobs_of(gateway: Gateway, key: str) -> list[dict]:
    with gateway.client(key) as h:
        return h.get("/api/v1/jobs").json()["jobs"]


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
    # OpenAI spells the language out, as Whisper's tokenizer names it
    assert r.language == "english" and r.duration == pytest.approx(8.74, abs=0.05)
    assert r.segments and r.segments[0].start >= 0 and "report" in r.text.lower()
    assert r.words and all(w.start <= w.end for w in r.words)
    assert any(w.word.lower().strip(".,") == "report" for w in r.words)
    # Whisper's own figures, not placeholders (0.0 would read as "certainly speech")
    for seg in r.segments:
        assert seg.tokens and seg.avg_logprob < 0 and seg.compression_ratio > 0 and 0 <= seg.no_speech_prob <= 1
        assert seg.temperature == 0.0 and seg.seek >= 0
    assert r.segments[0].no_speech_prob < 0.5  # the message itself is speech
    assert r.usage is not None and r.usage.type == "duration" and r.usage.seconds == 9
    # OpenAI's shape exactly: `speaker` only where the job was diarized (tests/test_diarize_jobs.py)
    raw = r.to_dict()
    assert not any("speaker" in part for part in raw["segments"] + raw["words"])


def test_silence_reads_as_no_speech_and_vad_is_an_extra_field(client, gateway, key, tmp_path):
    quiet = silence_wav(tmp_path / "room-tone.wav")
    # Given a clip with no speech in it, then Whisper says so: no_speech_prob well over 0.5
    r = transcribe(client, quiet, response_format="verbose_json")
    assert r.segments and all(s.no_speech_prob > 0.5 for s in r.segments), r.segments
    # When the VAD is asked for as an extra form field, then it cuts the whole clip
    r = transcribe(client, quiet, response_format="verbose_json", extra_body={"vad_filter": True, "beam_size": 2})
    assert r.segments == [] and r.text == ""
    options = [j["options"] for j in jobs_of(gateway, key)]
    assert any(o["vad_filter"] and o["beam_size"] == 2 for o in options), options


def test_translation(client):
    with (TESTDATA / "hello.wav").open("rb") as f:
        r = client.audio.translations.create(model="whisper-1", file=f, response_format="verbose_json")
    assert r.task == "translate" and "weather" in r.text.lower()


def test_models_lists_the_alias_and_what_the_fleet_serves(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "whisper-1" and "tiny.en" in ids
    assert client.models.retrieve("whisper-1").id == "whisper-1"
    m = client.models.retrieve("tiny.en")
    assert m.object == "model" and m.owned_by == "shared" and m.created > 0
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o-transcribe")
    assert e.value.code == "model_not_found"


def test_an_unknown_model_is_404_model_not_found_naming_the_fleets_models(client, gateway, key):
    with pytest.raises(openai.NotFoundError) as e:
        transcribe(client, model="gpt-4o-transcribe")
    assert e.value.code == "model_not_found" and e.value.type == "invalid_request_error"
    assert e.value.param == "model" and "tiny.en" in e.value.message
    assert jobs_of(gateway, key) == []


@pytest.mark.parametrize(
    ("what", "kw", "param"),
    [
        ("garbage", {"name": "garbage.bin"}, "file"),
        ("bad response_format", {"response_format": "docx"}, "response_format"),
        ("missing model", {"model": ""}, "model"),
        ("temperature not a number", {"temperature": "warm"}, "temperature"),
    ],
)
def test_refusals_are_400_bad_request_in_openais_shape(client, what, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, kw.pop("name", "hello.wav"), **kw)
    body = e.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, (what, body)
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["message"], (what, body)


def test_empty_file_and_a_pdf_are_400(client, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    pdf = tmp_path / "paper.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    for path, code in ((empty, "INVALID_INPUT"), (pdf, "UNSUPPORTED_MEDIA")):
        with pytest.raises(openai.BadRequestError) as e:
            transcribe(client, path)
        assert e.value.code == code and e.value.param == "file", e.value.body


def test_the_garbage_jobs_own_code_says_why(client):
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, "garbage.bin")
    # random bytes: PyAV finds no audio in them, and the job's code says so
    assert e.value.code in ("DECODE_FAILED", "NO_AUDIO_TRACK"), e.value.body
    assert "failed" in e.value.message


def test_wrong_key_is_401(gateway):
    c = OpenAI(base_url=f"{gateway.url}/v1", api_key="gpb_not_a_real_key")
    with pytest.raises(openai.AuthenticationError) as e:
        transcribe(c)
    assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"


def test_runs_on_the_owners_gpu_node_through_the_bus(gateway, user):
    key = gateway.create_key(user)
    node = start_node(gateway, "gpu", key=key, name=f"gpu-{user}")
    try:
        c = OpenAI(base_url=f"{gateway.url}/v1", api_key=key)
        assert "weather" in transcribe(c).text.lower()
        [job] = jobs_of(gateway, key)
        assert job["lane"] == "gpu" and job["status"] == "succeeded" and job["node_id"].startswith("gpu-")
    finally:
        node.stop()


@pytest.fixture(scope="module")
def quick_gateway(nats_server, workdir) -> Iterator[Gateway]:
    """A gateway whose synchronous endpoints wait 2 s."""
    gw = Gateway.on(nats_server, workdir, sync_timeout=2).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def longer(workdir) -> Path:
    """tests/data/long.wav looped to 5 minutes: on an idle CPU node here
    tiny.en ran at a real-time factor of 0.035, so long.wav's 77 s alone
    (2.7 s) finished about when the 2 s wait ran out."""
    return wav_of_seconds(TESTDATA / "long.wav", 300, workdir / "longer.wav")


def test_a_job_over_the_sync_timeout_is_one_job_answered_423_not_retried(quick_gateway, shared_cpu_node, user, longer):
    # Given the official client with its default retries, and a job longer than the sync time-out
    key = quick_gateway.create_key(user)
    c = OpenAI(base_url=f"{quick_gateway.url}/v1", api_key=key)
    # When it asks, then it is told the job goes on (a status it does not retry, and why)
    with pytest.raises(openai.APIStatusError) as e:
        transcribe(c, longer)
    assert e.value.status_code == 423 and e.value.code == "STILL_RUNNING"
    assert e.value.response.headers["x-should-retry"] == "false"
    job_id = e.value.body["job_id"]
    assert e.value.body["result_url"] == f"/api/v1/jobs/{job_id}/result" and job_id in e.value.message
    # and exactly one job was made, which goes on to finish
    [job] = jobs_of(quick_gateway, key)
    assert job["job_id"] == job_id
    with quick_gateway.client(key) as h:
        wait_until(
            lambda: h.get(f"/api/v1/jobs/{job_id}?wait=30").json()["status"] == "succeeded",
            timeout_s=150,
            what="the long job to finish",
        )
        assert "queue" in h.get(f"/api/v1/jobs/{job_id}/result?format=text").text.lower()


def test_a_client_that_times_out_and_retries_still_makes_one_job(quick_gateway, shared_cpu_node, user, longer):
    # Given a client whose time-out (1 s) is shorter than the gateway's wait and the job
    key = quick_gateway.create_key(user)
    tries: list[httpx.Request] = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [tries.append]})
    c = OpenAI(
        base_url=f"{quick_gateway.url}/v1", api_key=key, timeout=httpx.Timeout(1.0, connect=5.0), http_client=http
    )
    # When it times out and retries (twice, by default; each retry numbered in x-stainless-retry-count)
    with contextlib.suppress(openai.APITimeoutError):
        transcribe(c, longer)
    # then every try was the first try's job
    assert len(tries) >= 2 and tries[-1].headers["x-stainless-retry-count"] != "0"
    assert len(jobs_of(quick_gateway, key)) == 1


def test_an_idempotency_key_replays_the_same_job(quick_gateway, shared_cpu_node, user, longer):
    key = quick_gateway.create_key(user)
    c = OpenAI(base_url=f"{quick_gateway.url}/v1", api_key=key)
    same = {"Idempotency-Key": f"call-{user}"}
    # Given a call that outlived the wait, and its job finished since
    with pytest.raises(openai.APIStatusError) as e:
        transcribe(c, longer, response_format="text", extra_headers=same)
    job_id = e.value.body["job_id"]
    with quick_gateway.client(key) as h:
        wait_until(
            lambda: h.get(f"/api/v1/jobs/{job_id}?wait=30").json()["status"] == "succeeded",
            timeout_s=150,
            what="the long job to finish",
        )
    # When the caller asks again with the same key, then it gets that job's transcript, and no new job
    assert "queue" in transcribe(c, longer, response_format="text", extra_headers=same).lower()
    assert [j["job_id"] for j in jobs_of(quick_gateway, key)] == [job_id]
    # and the same key with another request is refused, not replayed
    with pytest.raises(openai.UnprocessableEntityError) as e:
        transcribe(c, "hello.wav", extra_headers=same)
    assert e.value.code == "IDEMPOTENCY_KEY_REUSED"


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
