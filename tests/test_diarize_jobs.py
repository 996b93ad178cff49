"""Speaker diarization as users get it: jobs through a real NATS, gateway and
nodes, on espeak-ng conversations made at test time (tests/speech_audio.py).
The nodes run the offline engine (the `diarize` extra), loaded by their first
diarized job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus.settings import GpuMode
from gateway.routing import Fleet, choose, cpu_queue
from ops.sse import parse
from schemas.diarization import DiarizedTranscript
from schemas.errors import InvalidInput
from tests import busreader, speech_audio
from tests.harness import Gateway, base_env, start_node, stop_all, submit_file, wait_job, wait_until

pytestmark = pytest.mark.timeout(300)

DIARIZE = json.dumps({"diarize": True})


def needs_espeak() -> None:
    if not speech_audio.espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def two_voices(tmp_path_factory) -> tuple[Path, speech_audio.Spoken]:
    needs_espeak()
    spoken = speech_audio.two_speakers()
    return speech_audio.write_wav(spoken, tmp_path_factory.mktemp("speech") / "two-voices.wav"), spoken


@pytest.fixture(scope="module")
def one_voice(tmp_path_factory) -> Path:
    needs_espeak()
    return speech_audio.write_wav(speech_audio.one_speaker(), tmp_path_factory.mktemp("speech") / "one-voice.wav")


def diarized(c, job_id: str) -> DiarizedTranscript:
    r = c.get(f"/api/v1/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    return DiarizedTranscript.model_validate_json(r.text)


@pytest.mark.parametrize("options", [{"diarize": True}, {"diarize": True, "num_speakers": 2}], ids=["auto", "num2"])
def test_a_two_voice_conversation_is_two_speakers_with_the_words_right(
    gateway, shared_cpu_node, user, two_voices, options
):
    # Given an A-B-A-B conversation of two espeak-ng voices
    path, spoken = two_voices
    with gateway.client(gateway.create_key(user)) as c:
        # When it is submitted with diarize (speaker count automatic, or 2)
        job = submit_file(c, path, options=json.dumps(options))
        final = wait_job(c, job["job_id"], timeout_s=180)
        assert final["status"] == "succeeded", final
        result = diarized(c, job["job_id"])
    # Then it has exactly two speakers, and >= 90% of the word time carries the right one
    assert [s.speaker for s in result.speakers] == ["SPEAKER_00", "SPEAKER_01"]
    accuracy = speech_audio.word_accuracy(result, spoken.turns)
    print(f"job-level word accuracy ({options}): {accuracy:.3f}")
    assert accuracy >= 0.90
    assert all(w.speaker for seg in result.segments for w in seg.words or [])
    assert result.diarization_engine.startswith("offline")
    # And the record says what diarization cost
    (stage,) = final["summary"]["stages"]
    assert stage["name"] == "diarization" and stage["media_s"] == pytest.approx(spoken.duration_s, abs=0.1)


def test_rttm_parses_and_vtt_srt_text_md_carry_the_speakers(gateway, shared_cpu_node, user, two_voices):
    # Given a diarized job of the two-voice conversation, followed on its event stream
    path, _ = two_voices
    with gateway.client(gateway.create_key(user)) as c:
        job = submit_file(c, path, options=DIARIZE)
        with c.stream("GET", f"/api/v1/jobs/{job['job_id']}/events") as r:
            events = list(parse(r.iter_lines()))
        # When its result is asked for in each format
        rttm = c.get(f"/api/v1/jobs/{job['job_id']}/result?format=rttm")
        vtt, srt, text, md = (
            c.get(f"/api/v1/jobs/{job['job_id']}/result", params={"format": f}).text
            for f in ("vtt", "srt", "text", "md")
        )
        turns = diarized(c, job["job_id"]).turns
    # Then RTTM has one SPEAKER line per turn, in RTTM's ten fields
    assert rttm.status_code == 200 and rttm.headers["content-type"].startswith("text/x-rttm")
    rows = [line.split() for line in rttm.text.splitlines()]
    assert len(rows) == len(turns) >= 4
    for row, turn in zip(rows, turns, strict=True):
        assert len(row) == 10 and row[0] == "SPEAKER" and row[2] == "1" and row[7] == turn.speaker
        assert float(row[3]) == pytest.approx(turn.start, abs=1e-3) and float(row[4]) > 0
    # And VTT has voice tags, SRT and text a speaker at each change, Markdown a paragraph per turn
    assert "<v SPEAKER_00>" in vtt and "<v SPEAKER_01>" in vtt
    assert "SPEAKER_00: " in srt and "SPEAKER_01: " in srt
    assert [line.split(":")[0] for line in text.splitlines()][:4] == ["SPEAKER_00", "SPEAKER_01"] * 2
    assert md.count("**SPEAKER_0") == len(text.splitlines())
    # And the progress went through both phases in order, never backwards
    progress = [e.data for e in events if e.event == "progress" and e.data.get("phase")]
    phases = [p["phase"] for p in progress]
    assert "transcribing" in phases and "diarizing" in phases
    assert phases.index("diarizing") > max(i for i, p in enumerate(phases) if p == "transcribing")
    fractions = [p["progress"] for p in progress if "progress" in p]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.5


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args], env=env, capture_output=True, text=True, timeout=240
    )


def test_one_voice_is_one_speaker_from_the_cli(gateway, shared_cpu_node, user, one_voice, tmp_path):
    # Given one espeak-ng voice reading three sentences
    env = base_env(gateway.nats_url, gateway_url=gateway.url, api_key=gateway.create_key(user), data_dir=tmp_path)
    # When `gpubus submit --diarize --wait --json` sends it
    r = cli("submit", str(one_voice), "--diarize", "--wait", "--json", env=env)
    # Then the transcript has one speaker, on every segment
    assert r.returncode == 0, r.stderr
    result = DiarizedTranscript.model_validate(json.loads(r.stdout)["result"])
    assert [s.speaker for s in result.speakers] == ["SPEAKER_00"]
    assert {seg.speaker for seg in result.segments} == {"SPEAKER_00"}
    # And `--format rttm` prints its turns
    rttm = cli("jobs", "result", json.loads(r.stdout)["job"]["job_id"], "--format", "rttm", env=env)
    assert rttm.returncode == 0 and rttm.stdout.startswith("SPEAKER "), rttm.stderr


def test_the_older_api_and_the_openai_endpoint_diarize_too(gateway, shared_cpu_node, user, one_voice):
    with gateway.client(gateway.create_key(user)) as c:
        # Given the older API's flat fields, When it waits for a diarized job as RTTM
        with one_voice.open("rb") as f:
            data = {"diarize": "true", "num_speakers": "1", "format": "rttm"}
            r = c.post("/process/file", files={"file": ("one.wav", f)}, data=data)
        # Then the answer is the RTTM of one speaker
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-rttm"), r.text
        assert {line.split()[7] for line in r.text.splitlines()} == {"SPEAKER_00"}
        # Given the OpenAI endpoint's extra form fields, When it asks for WebVTT
        with one_voice.open("rb") as f:
            data = {"model": "whisper-1", "diarize": "true", "response_format": "vtt"}
            r = c.post("/v1/audio/transcriptions", files={"file": ("one.wav", f)}, data=data)
        # Then the cues carry voice tags
        assert r.status_code == 200 and "<v SPEAKER_00>" in r.text, r.text


def test_openai_verbose_json_of_a_diarized_job_has_a_speaker_on_every_segment_and_word(
    gateway, shared_cpu_node, user, two_voices
):
    # Given the two-voice conversation sent to the OpenAI endpoint with diarize and word times
    path, _ = two_voices
    with gateway.client(gateway.create_key(user)) as c, path.open("rb") as f:
        data = {"model": "whisper-1", "diarize": "true", "response_format": "verbose_json"}
        data["timestamp_granularities[]"] = "word"
        # When it answers in verbose_json
        r = c.post("/v1/audio/transcriptions", files={"file": ("two.wav", f)}, data=data)
    # Then each segment and each word names its speaker, and both voices are there
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["segments"] and body["words"]
    assert {s["speaker"] for s in body["segments"]} == {"SPEAKER_00", "SPEAKER_01"}
    assert {w["speaker"] for w in body["words"]} == {"SPEAKER_00", "SPEAKER_01"}


def test_contradictions_and_kinds_without_audio_are_422(gateway, shared_cpu_node, user, one_voice):
    with gateway.client(gateway.create_key(user)) as c:
        # Given speaker counts that contradict each other, on each way in
        bad = {"diarize": True, "min_speakers": 3, "max_speakers": 2}
        with one_voice.open("rb") as f:
            r = c.post("/api/v1/jobs", files={"file": ("a.wav", f)}, data={"options": json.dumps(bad)})
        assert r.status_code == 422 and "min_speakers (3) is greater than max_speakers (2)" in r.text, r.text
        r = c.post("/api/v1/jobs", json={"url": "http://127.0.0.1:9/a.mp3", "options": bad})
        assert r.status_code == 422 and "min_speakers" in r.text, r.text
        with one_voice.open("rb") as f:
            r = c.post("/process/file", files={"file": ("a.wav", f)}, data={"diarize": "true", **_text(bad)})
        assert r.status_code == 422 and "min_speakers" in r.text, r.text
        with one_voice.open("rb") as f:
            fields = {"model": "whisper-1", "diarize": "true", **_text(bad)}
            r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", f)}, data=fields)
        assert r.status_code == 400 and "min_speakers" in r.text, r.text  # OpenAI's status for bad input
        # And a speaker count without diarize
        r = c.post("/api/v1/jobs", json={"url": "http://127.0.0.1:9/a.mp3", "options": {"num_speakers": 2}})
        assert r.status_code == 422 and "num_speakers needs diarize: true" in r.text, r.text
        # Given diarize on a kind without audio (a document, uploaded or inline)
        r = c.post("/api/v1/jobs", json={"kind": "document", "text": "# Minutes", "options": {"diarize": True}})
        assert r.status_code == 422 and "a document job has no audio to diarize" in r.text, r.text
        files = {"file": ("minutes.md", b"# Minutes\n")}
        r = c.post("/api/v1/jobs", files=files, data={"kind": "document", "options": DIARIZE})
        assert r.status_code == 422 and "no audio to diarize" in r.text, r.text
        # Then nothing was queued
        assert c.get("/api/v1/jobs").json()["total"] == 0


def _text(options: dict) -> dict[str, str]:
    return {k: str(v) for k, v in options.items() if k != "diarize"}


def test_a_gpu_node_without_an_engine_never_gets_a_diarized_job(gateway, shared_cpu_node, user, one_voice):
    # Given the user's GPU node, which has no diarization engine, and the shared CPU pool, which has one
    key = gateway.create_key(user)
    gpu = start_gpu(gateway, key, user, diarization_enabled="false")
    try:
        mine = [n for n in gateway.live_nodes() if n["owner"] == user]
        assert [n["features"] for n in mine] == [{}]
        shared = [n for n in gateway.live_nodes() if n["owner"] == "shared"]
        assert all(n["features"]["diarization"][0].startswith("offline") for n in shared)
        with gateway.client(key) as c:
            # When a diarized job asks for the GPU
            job = submit_file(c, one_voice, gpu=True, options=DIARIZE)
            # Then it goes to the CPU lane, saying why, and is diarized there
            assert (job["lane"], job["routed_reason"]) == ("cpu", "feature_not_served_on_gpu")
            final = wait_job(c, job["job_id"], timeout_s=120)
            assert final["status"] == "succeeded" and final["node_id"].startswith("cpu-"), final
            # And a plain job still takes the GPU
            assert submit_file(c, one_voice, gpu=True)["lane"] == "gpu"
        assert all(
            e.node_id.startswith("cpu-") for e in busreader.events(gateway.nats_url, user) if e.job_id == job["job_id"]
        )
    finally:
        stop_all([gpu])


def start_gpu(gateway, key: str, user: str, **settings: str):
    return start_node(gateway, "gpu", key=key, name=f"gpu-{user}", **settings)


def test_no_live_node_serving_diarization_is_422_naming_what_is_served(fresh_nats, tmp_path):
    # Given a fleet whose only node has no diarization engine
    gw = Gateway.on(fresh_nats, tmp_path).start()
    node = None
    try:
        node = start_node(gw, "cpu", shared=True, name="no-diarization", diarization_enabled="false")
        with gw.client(gw.create_key("alice")) as c:
            # When a diarized job is submitted
            r = c.post("/api/v1/jobs", json={"url": "https://media.example/a.mp3", "options": {"diarize": True}})
            # Then it is refused, naming what is served
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "FEATURE_NOT_SERVED"
            assert "diarization is not served by any live node" in error["message"]
            assert "features served: none" in error["message"]
    finally:
        stop_all([p for p in (node, gw.proc) if p is not None])


def test_a_gpu_node_killed_while_diarizing_falls_back_to_cpu(gateway, shared_cpu_node, user, two_voices):
    # Given the user's GPU node (on the CPU here) with the offline engine, diarizing a conversation
    path, spoken = two_voices
    key = gateway.create_key(user)
    gpu = start_gpu(gateway, key, user)
    try:
        with gateway.client(key) as c:
            job = submit_file(c, path, gpu=True, options=DIARIZE)
            assert job["lane"] == "gpu", job
            killed = None
            with c.stream("GET", f"/api/v1/jobs/{job['job_id']}/events") as r:
                for ev in parse(r.iter_lines()):
                    # When the node is killed -9 as soon as its progress events say it is diarizing
                    if ev.event == "progress" and ev.data.get("phase") == "diarizing":
                        gpu.signal(signal.SIGKILL)
                        killed = ev.data
                        break
                    assert ev.event != "succeeded", "the GPU node finished before it could be killed"
            assert killed is not None and killed["node_id"].startswith("gpu-"), "no diarizing phase seen"
            # Then the CPU lane finishes it, diarized: attempt 2, one terminal event in all
            final = wait_job(c, job["job_id"], timeout_s=180)
            assert final["status"] == "succeeded", final
            assert final["attempts"] == 2 and final["lane"] == "cpu" and final["fallback"]["from"] == "gpu"
            assert "phase" not in final  # a finished job is in no phase
            result = diarized(c, job["job_id"])
            assert len(result.speakers) == 2 and speech_audio.word_accuracy(result, spoken.turns) >= 0.90
        wait_until(lambda: not gpu.alive(), timeout_s=10, what="the GPU node gone")
        assert busreader.terminal_counts(gateway.nats_url, user) == {job["job_id"]: 1}
    finally:
        stop_all([gpu])


# The routing rules for a job that needs diarization, without processes.

NEEDS = frozenset({"diarization"})


def _fleet(*, gpu: bool = False, cpu: bool = False, shared: bool = False):
    """The owner's GPU and CPU nodes and the shared pool, each live, and
    serving diarization where True (a node of each is live either way)."""

    async def backlog() -> int:
        return 0

    def features(serves: bool) -> frozenset[str]:
        return NEEDS if serves else frozenset()

    return Fleet(
        owner_gpu_live=True,
        owner_cpu_live=True,
        gpu_backlog=backlog,
        gpu_features=features(gpu),
        cpu_features=features(cpu),
        shared_features=features(shared),
    )


@pytest.mark.parametrize(
    ("fleet", "gpu", "lane", "queue", "reason"),
    [
        (_fleet(gpu=True, cpu=True), True, "gpu", "alice", "gpu_requested"),
        (_fleet(cpu=True), True, "cpu", "alice", "feature_not_served_on_gpu"),
        (_fleet(shared=True), True, "cpu", "shared", "feature_not_served_on_gpu"),
        (_fleet(shared=True), False, "cpu", "shared", "gpu_not_requested"),
        (_fleet(gpu=True), False, "gpu", "alice", "feature_served_only_on_gpu"),
    ],
)
async def test_a_diarized_job_goes_only_where_diarization_is_served(fleet, gpu, lane, queue, reason):
    route = await choose("alice", "audio", gpu, GpuMode.OPTIONAL, fleet, max_backlog=10, needs=NEEDS)
    assert (route.lane, route.queue_owner, route.reason) == (lane, queue, reason)
    # and a fallback from the GPU lane picks the CPU queue by the same rule
    if fleet.cpu_features or fleet.shared_features:
        assert cpu_queue("alice", fleet, "audio", NEEDS) == ("alice" if fleet.cpu_features else "shared")


async def test_gpu_required_without_a_gpu_node_serving_diarization_is_refused():
    with pytest.raises(InvalidInput) as e:
        await choose("alice", "audio", True, GpuMode.OPTIONAL, _fleet(cpu=True), 10, required=True, needs=NEEDS)
    assert e.value.code == "FEATURE_NOT_SERVED" and "no live GPU node of yours serves diarization" in e.value.message
