"""Wire contracts: codec, names, formats, keys, sniffing (no server needed)."""

from __future__ import annotations

import msgpack
import pytest

from bus.topology import EVENT_MAX_BYTES
from schemas import codec, names
from schemas.errors import InvalidInput, Unauthorized
from schemas.events import EventType, JobEvent
from schemas.formats import render
from schemas.jobs import (
    CODE_MAX,
    ID_MAX,
    MESSAGE_MAX,
    NAME_MAX,
    NODE_ID_MAX,
    OBJECT_NAME_MAX,
    ErrorInfo,
    JobMessage,
    ResultSummary,
    TranscribeOptions,
    new_job_id,
)
from schemas.keys import ApiKeyRecord, new_secret, parse_key, secret_matches
from schemas.media_sniff import sniff
from schemas.names import Kind, Lane, Priority
from schemas.nodes import metrics_url_refusal
from schemas.results import Segment, Transcript
from tests.harness import TESTDATA


def _job(**kw) -> JobMessage:
    base = dict(
        job_id=new_job_id(),
        owner="alice",
        queue_owner="alice",
        lane=Lane.GPU,
        kind=Kind.AUDIO,
        attempt=1,
        submitted_at=1.0,
    )
    return JobMessage(**(base | kw))


def test_codec_roundtrip_keeps_version_and_fields():
    job = _job(options=TranscribeOptions(language="de", word_timestamps=True))
    back = codec.decode(codec.encode(job), JobMessage)
    assert back == job and back.v == 1


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"not msgpack at all", msgpack.packb([1, 2]), msgpack.packb({"v": 1})])
def test_codec_refuses_garbage_and_keeps_raw(raw):
    with pytest.raises(codec.DecodeError) as e:
        codec.decode(raw, JobMessage)
    assert e.value.raw == raw and e.value.code == "DECODE_ERROR"


def test_codec_refuses_bad_job_id_and_attempt():
    data = msgpack.packb(_job().model_dump(mode="json") | {"job_id": "../etc", "attempt": 0})
    with pytest.raises(codec.DecodeError):
        codec.decode(data, JobMessage)


@pytest.mark.parametrize("owner", ["alice", "a", "bob-2", "x_y", "0" * 64])
def test_owner_ids_accepted(owner):
    assert names.validate_owner(owner) == owner


@pytest.mark.parametrize("owner", ["", "Alice", "a.b", "a>", "a*", "-a", "a b", "0" * 65, "shared", "anonymous"])
def test_owner_ids_refused(owner):
    with pytest.raises(InvalidInput):
        names.validate_owner(owner)


def test_subjects_and_consumers():
    assert names.job_subject("alice", Lane.GPU, Kind.VIDEO) == "jobs.alice.gpu.video"
    assert names.consumer_name("alice", Lane.GPU) == "gpu_alice"
    assert names.consumer_name(names.SHARED, Lane.CPU) == "cpu_shared"
    assert names.lane_filter("alice", Lane.CPU) == "jobs.alice.cpu.>"
    assert names.result_object("j1", 2) == "out/j1/2.json"


QUEUES = [
    (names.LaneQueue("alice", Lane.GPU), "gpu_alice", "jobs.alice.gpu.*", "jobs.alice.gpu.audio"),
    (
        names.LaneQueue("alice", Lane.GPU, Priority.HIGH),
        "gpu-high_alice",
        "jobs.alice.gpu.*.high",
        "jobs.alice.gpu.audio.high",
    ),
    (names.LaneQueue("a_b", Lane.CPU, Priority.LOW), "cpu-low_a_b", "jobs.a_b.cpu.*.low", "jobs.a_b.cpu.audio.low"),
    (
        names.LaneQueue(names.SHARED, Lane.CPU, Priority.NORMAL, "alice"),
        "cpu-shared_alice",
        "jobs.shared.cpu.*.alice.normal",
        "jobs.shared.cpu.audio.alice.normal",
    ),
    (
        names.LaneQueue(names.SHARED, Lane.CPU, Priority.HIGH, "shared_x"),
        "cpu-shared-high_shared_x",
        "jobs.shared.cpu.*.shared_x.high",
        "jobs.shared.cpu.audio.shared_x.high",
    ),
    (names.LaneQueue(names.SHARED, Lane.CPU), "cpu_shared", "jobs.shared.cpu.*.*", "jobs.shared.cpu.audio.alice"),
]


@pytest.mark.parametrize(("queue", "consumer", "filter_", "subject"), QUEUES)
def test_queue_names_round_trip(queue, consumer, filter_, subject):
    """Every queue's consumer name, filter and subjects, and back again."""
    assert (queue.consumer, queue.filter) == (consumer, filter_)
    assert names.parse_consumer_name(consumer) == queue
    assert names.queue_of_subject(subject) == queue
    assert names.queue_of_subject(names.QUEUED_PREFIX + subject.removeprefix("jobs")) == queue
    if not queue.legacy:
        owner = queue.job_owner
        assert names.job_subject(queue.queue_owner, queue.lane, "audio", owner, queue.priority) == subject


def test_no_owner_id_makes_one_queue_name_another():
    """Owner ids may hold `_` and `-`; a name still parses one way only, so
    one owner's node permissions never name another's consumer."""
    consumers = {q.consumer for owner in ("shared_alice", "alice", "high_alice", "x-high") for q in _all_queues(owner)}
    assert len(consumers) == len(
        [q for owner in ("shared_alice", "alice", "high_alice", "x-high") for q in _all_queues(owner)]
    )
    assert names.parse_consumer_name("cpu_shared_alice") == names.LaneQueue("shared_alice", Lane.CPU)
    for bad in ("cpu-normal_alice", "cpu-shared-normal_alice", "cpu-shared_shared", "tpu_alice", "gpu-high_", "gpu"):
        assert names.parse_consumer_name(bad) is None, bad
    for bad in ("jobs.alice.gpu.audio.normal", "jobs.alice.gpu.audio.x.y", "jobs.shared.cpu.audio.bob.urgent"):
        assert names.queue_of_subject(bad) is None, bad


def _all_queues(owner: str) -> list[names.LaneQueue]:
    own = [q for lane in Lane for q in names.own_queues(owner, lane)]
    return own + list(names.pool_shares(owner))


def _transcript() -> Transcript:
    return Transcript(
        text="Hello world. Again.",
        language="en",
        duration=3723.5,
        segments=[
            Segment(id=0, start=0.0, end=1.5, text=" Hello world."),
            Segment(id=1, start=3661.007, end=3723.4996, text=" Again."),
        ],
    )


def test_srt_timing_syntax_exact():
    body, media_type = render(_transcript(), "srt")
    assert body == ("1\n00:00:00,000 --> 00:00:01,500\nHello world.\n\n2\n01:01:01,007 --> 01:02:03,500\nAgain.\n")
    assert media_type.startswith("application/x-subrip")


def test_vtt_timing_syntax_exact():
    body, _ = render(_transcript(), "vtt")
    assert body == "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello world.\n\n01:01:01.007 --> 01:02:03.500\nAgain.\n"


def test_text_json_md_and_unknown_format():
    assert render(_transcript(), "text")[0] == "Hello world. Again.\n"
    assert '"segments"' in render(_transcript(), "json")[0]
    md = render(_transcript(), "md")[0]
    assert md.startswith("# Transcript") and "**[01:01:01]** Again." in md
    with pytest.raises(InvalidInput):
        render(_transcript(), "docx")


def test_keys_are_random_prefixed_and_hashed():
    full, key_id, digest = new_secret()
    assert full.startswith("gpb_") and len(full) >= 4 + 16 + 1 + 43
    kid, secret = parse_key(full)
    assert kid == key_id and secret not in digest
    rec = ApiKeyRecord(key_id=kid, user_id="a", roles=["user"], secret_sha256=digest, created_at=0)
    tampered = secret[:-1] + ("B" if secret[-1] == "A" else "A")  # always differs from secret
    assert secret_matches(secret, rec) and not secret_matches(tampered, rec)
    assert new_secret()[0] != full
    for bad in ("", "gpb_", "gpb_zz_x", full + "x", full.replace("gpb_", "gpx_")):
        with pytest.raises(Unauthorized):
            parse_key(bad)


@pytest.mark.parametrize(
    "name,kind",
    [("hello.wav", Kind.AUDIO), ("hello.mp4", Kind.VIDEO), ("garbage.bin", Kind.AUDIO)],
)
def test_sniff_testdata(name, kind):
    assert sniff((TESTDATA / name).read_bytes()[:64])[0] is kind


@pytest.mark.parametrize(
    "head",
    [b"PK\x03\x04xx", b"GIF89a", b'{"a": 1}', b"[1, 2]", b"<?xml version='1.0'?><svg/>", b"\x7fELF", b"MZ\x90\x00"],
)
def test_sniff_refuses_what_no_processor_takes(head):
    assert sniff(head)[0] is None


@pytest.mark.parametrize(
    ("head", "filename", "kind", "label"),
    [
        (b"%PDF-1.5\n", None, Kind.DOCUMENT, "pdf"),
        (b"<!DOCTYPE html><html><body>", None, Kind.DOCUMENT, "html"),
        (b"# Notes\n\nSome *words*.", "notes.md", Kind.DOCUMENT, "md"),
        (b"Plain words, caf\xc3\xa9 \xe2\x82", None, Kind.DOCUMENT, "text"),  # a character cut at the end
        (b"\x89PNG\r\n\x1a\n", None, Kind.IMAGE, "png"),
        (b"\xff\xd8\xff\xe0", None, Kind.IMAGE, "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", None, Kind.IMAGE, "webp"),
        (b"II*\x00\x08\x00", None, Kind.IMAGE, "tiff"),
        (b"BM" + bytes(12) + b"\x28\x00\x00\x00", None, Kind.IMAGE, "bmp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None, Kind.AUDIO, "wav"),
        (b"[build-system]\nrequires = []\n", "pyproject.toml", Kind.DOCUMENT, "text"),  # not JSON
    ],
)
def test_sniff_names_documents_and_images(head, filename, kind, label):
    assert sniff(head, filename) == (kind, label)


def test_sniff_tells_office_zips_from_other_archives(tmp_path):
    import zipfile

    from tests import document_files as files

    made = {
        "docx": files.docx_with_headings(tmp_path / "a.docx"),
        "pptx": files.pptx_two_slides(tmp_path / "a.pptx"),
        "xlsx": files.xlsx_sheet(tmp_path / "a.xlsx"),
        "epub": files.epub_book(tmp_path / "a.epub"),
    }
    for label, path in made.items():
        assert sniff(path.read_bytes()[:8192]) == (Kind.DOCUMENT, label), label
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf:
        zf.writestr("notes/readme.txt", "not an office file " * 50)
        zf.writestr("word.txt", "a name that is not a part")
    assert sniff((tmp_path / "plain.zip").read_bytes()[:8192]) == (None, "zip")


def _max_event() -> JobEvent:
    """An event with every free-text field at its bound."""
    return JobEvent(
        type=EventType.FAILED,
        job_id="j" + "f" * 32,
        owner="o" * ID_MAX,
        attempt=1,
        lane=Lane.GPU,
        node_id="n" * NODE_ID_MAX,
        at=1.0,
        result_object="r" * OBJECT_NAME_MAX,
        error=ErrorInfo(code="C" * CODE_MAX, message="é" * MESSAGE_MAX),
        summary=ResultSummary(language="l" * NAME_MAX, device="d" * NAME_MAX, model="m" * NAME_MAX),
    )


def test_event_at_every_bound_fits_the_events_stream():
    assert len(codec.encode(_max_event())) < EVENT_MAX_BYTES


@pytest.mark.parametrize(
    "field,value",
    [
        ("node_id", "n" * (NODE_ID_MAX + 1)),
        ("result_object", "r" * (OBJECT_NAME_MAX + 1)),
        ("error", {"code": "C", "message": "m" * (MESSAGE_MAX + 1)}),
        ("error", {"code": "C" * (CODE_MAX + 1), "message": ""}),
        ("summary", {"model": "m" * (NAME_MAX + 1)}),
        ("job_id", "j" * (ID_MAX + 1)),
    ],
)
def test_event_over_a_bound_does_not_decode(field, value):
    raw = _max_event().model_dump(mode="json") | {field: value}
    with pytest.raises(codec.DecodeError):
        codec.decode(msgpack.packb(raw), JobEvent)


def test_error_info_of_cuts_a_long_report_to_fit():
    info = ErrorInfo.of("E" * 100, "x" * 10_000)
    assert len(info.code) == CODE_MAX and len(info.message) == MESSAGE_MAX


@pytest.mark.parametrize("url", ["http://10.1.2.3:9100/metrics", "https://node.example:443/m"])
def test_metrics_url_plain_http_with_host_and_port_passes(url):
    assert metrics_url_refusal(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://h:70/",
        "http://user:pw@h:9100/metrics",
        "http://h/metrics",
        "http://:9100/",
        "http://h:99999/",
        "http://h:9100/metrics?target=http://169.254.169.254/",
        "not a url",
    ],
)
def test_metrics_url_anything_else_is_refused(url):
    assert metrics_url_refusal(url) is not None
