"""whisper-asr-webservice's API (`POST /asr`, `POST /detect-language`), posted
to exactly as its own documentation's curl examples do, and as Bazarr's
Whisper provider does (raw PCM with `encode=false`)."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import httpx
import pytest

from tests.harness import TESTDATA
from tests.media_files import raw_pcm
from tests.test_formats import check_srt_syntax, check_vtt_syntax

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def key(gateway, shared_cpu_node, user) -> str:
    return gateway.create_key(user)


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """curl as a user runs it: (status, headers, body)."""
    out = subprocess.run(
        ["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=150, check=True
    ).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    while body.startswith("HTTP/"):  # an interim `100 Continue` came first
        head, _, body = body.partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("output", ["txt", "vtt", "srt", "tsv", "json"])
def test_asr_as_its_docs_curl_it_in_every_output(gateway, key, output):
    # Given the documented example, with the key as a bearer header:
    # curl -X POST -H "content-type: multipart/form-data" -F "audio_file=@/path/to/file" 0.0.0.0:9000/asr?output=json
    status, headers, body = curl(
        "-X", "POST",
        "-H", "content-type: multipart/form-data",
        "-H", f"Authorization: Bearer {key}",
        "-F", f"audio_file=@{TESTDATA / 'hello.wav'}",
        f"{gateway.url}/asr?output={output}",
    )  # fmt: skip
    # Then the transcript comes back as a file in that format
    assert status == 200, body
    assert headers["content-disposition"] == f'attachment; filename="hello.wav.{output}"'
    assert headers["asr-engine"] == "faster_whisper"
    assert "weather" in body.lower()
    if output == "txt":
        assert body.endswith("\n") and len(body.strip().splitlines()) >= 1
    elif output == "vtt":
        assert check_vtt_syntax(body) >= 1
    elif output == "srt":
        assert check_srt_syntax(body) >= 1
    elif output == "tsv":
        rows = list(csv.reader(io.StringIO(body), delimiter="\t"))
        assert rows[0] == ["start", "end", "text"] and all(int(r[0]) <= int(r[1]) for r in rows[1:])
    else:
        doc = json.loads(body)
        assert doc["language"] == "en" and "weather" in doc["text"].lower()
        seg = doc["segments"][0]
        assert {"id", "seek", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"} <= set(seg)


def test_asr_with_the_key_in_the_url_and_every_option(gateway, key):
    # Given a client that can only be given a URL (the key as ?api_key=)
    query = (
        f"api_key={key}&task=transcribe&language=en&output=json&encode=true&word_timestamps=true"
        "&vad_filter=true&initial_prompt=A%20weather%20report."
    )
    status, _, body = curl("-X", "POST", "-F", f"audio_file=@{TESTDATA / 'hello.wav'}", f"{gateway.url}/asr?{query}")
    assert status == 200, body
    doc = json.loads(body)
    words = [w for s in doc["segments"] for w in s["words"]]
    assert words and all(w["start"] <= w["end"] for w in words)
    with gateway.client(key) as c:
        [job] = c.get("/api/v1/jobs").json()["jobs"]
    assert job["options"]["vad_filter"] and job["options"]["word_timestamps"] and job["options"]["language"] == "en"
    assert job["options"]["initial_prompt"] == "A weather report."


def test_the_url_key_is_only_for_these_routes(gateway, key):
    with httpx.Client(base_url=gateway.url) as c:
        assert c.get(f"/api/v1/jobs?api_key={key}").status_code == 401
        assert c.get(f"/v1/models?api_key={key}").status_code == 401
        with (TESTDATA / "hello.wav").open("rb") as f:
            r = c.post("/asr?api_key=gpb_wrong", files={"audio_file": f})
        assert r.status_code == 401


def test_raw_pcm_with_encode_false_as_bazarr_sends_it(gateway, key):
    # Given 16 kHz mono s16le PCM with no header, as Bazarr's Whisper provider posts it
    pcm = raw_pcm(TESTDATA / "hello.wav")
    params = {"task": "transcribe", "language": "en", "output": "srt", "encode": "false"}
    with gateway.client(key) as c:
        r = c.post("/asr", params=params, files={"audio_file": ("hello.pcm", pcm)}, timeout=150)
    assert r.status_code == 200, r.text
    assert check_srt_syntax(r.text) >= 1 and "weather" in r.text.lower()


def test_detect_language_as_its_docs_curl_it(gateway, key):
    # curl -X POST -F "audio_file=@movie.mp4" http://localhost:9000/detect-language
    status, _, body = curl(
        "-X", "POST", "-H", f"Authorization: Bearer {key}", "-F", f"audio_file=@{TESTDATA / 'hello.mp4'}",
        f"{gateway.url}/detect-language",
    )  # fmt: skip
    assert status == 200, body
    doc = json.loads(body)
    assert doc["detected_language"] == "english" and doc["language_code"] == "en"
    assert 0 < doc["confidence"] <= 1
    with gateway.client(key) as c:
        [job] = c.get("/api/v1/jobs").json()["jobs"]
    assert job["options"]["clip_s"] == 30  # the first 30 s only, as whisper-asr-webservice reads


def test_refusals_are_clear(gateway, key):
    with gateway.client(key) as c:
        for params, what in (
            ({"diarize": "true", "min_speakers": "3", "max_speakers": "2"}, "max_speakers"),
            ({"output": "docx"}, "output"),
            ({"task": "summarize"}, "task"),
            ({"language": "xx"}, "language"),
        ):
            with (TESTDATA / "hello.wav").open("rb") as f:
                r = c.post("/asr", params=params, files={"audio_file": f})
            assert r.status_code == 422 and what in r.json()["error"]["message"], (params, r.text)
        r = c.post("/asr", files={"file": ("hello.wav", b"RIFF" + bytes(60))})  # OpenAI's field name, not its
        assert r.status_code == 422 and "audio_file" in r.json()["error"]["message"]
        assert c.get("/api/v1/jobs").json()["jobs"] == []
