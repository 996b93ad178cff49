"""Speaker diarization at engine level: the offline engine on espeak-ng
conversations made at test time, speakers put on a real faster-whisper
transcript (the bundled tiny.en), the speaker-aware formats, the options."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from processors import audio_decode, diarization_pyannote
from processors.diarization import (
    DiarizationSettings,
    DiarizationUnavailable,
    Turn,
    assign_speakers,
    select_engine,
)
from processors.diarization_offline import OfflineEngine
from processors.whisper_engine import EngineConfig, WhisperEngine
from schemas.diarization import DiarizeOptions, InvalidSpeakerCount, parse_options
from schemas.diarized_formats import render
from schemas.jobs import TranscribeOptions
from schemas.results import Segment, Transcript, Word
from tests import speech_audio
from tests.harness import TESTDATA

pytestmark = pytest.mark.timeout(600)
needs_espeak = pytest.mark.skipif(
    not speech_audio.espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


@pytest.fixture(scope="module")
def engine() -> OfflineEngine:
    return OfflineEngine(device="cpu")


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    return WhisperEngine(EngineConfig(model=None, device="cpu", compute_type="int8"))


def transcribe(whisper: WhisperEngine, spoken: speech_audio.Spoken) -> Transcript:
    opts = TranscribeOptions(word_timestamps=True, language="en")
    return whisper.transcribe(
        spoken.audio, opts, on_segment=lambda d, t, segment=None: None, cancelled=threading.Event()
    )


@pytest.fixture(scope="module")
def two(whisper: WhisperEngine) -> tuple[speech_audio.Spoken, Transcript]:
    spoken = speech_audio.two_speakers()
    return spoken, transcribe(whisper, spoken)


@pytest.fixture(scope="module")
def one(whisper: WhisperEngine) -> tuple[speech_audio.Spoken, Transcript]:
    spoken = speech_audio.one_speaker()
    return spoken, transcribe(whisper, spoken)


@needs_espeak
@pytest.mark.parametrize(
    "opts", [DiarizeOptions(diarize=True), DiarizeOptions(diarize=True, num_speakers=2)], ids=["auto", "num2"]
)
def test_two_voices_are_two_speakers_and_words_get_the_right_one(engine, two, opts):
    # Given an A-B-A-B conversation of two espeak-ng voices and its transcript
    spoken, transcript = two
    # When it is diarized and the words labelled
    result = assign_speakers(transcript, engine.diarize(spoken.audio, opts), engine.name)
    # Then there are two speakers and >= 90% of the word time has the right one
    assert [s.speaker for s in result.speakers] == ["SPEAKER_00", "SPEAKER_01"]
    accuracy = speech_audio.word_accuracy(result, spoken.turns)
    print(f"two voices ({opts.num_speakers or 'auto'}): word accuracy {accuracy:.3f}, turns {len(result.turns)}")
    assert accuracy >= 0.90
    assert all(seg.speaker and all(w.speaker for w in seg.words or []) for seg in result.segments)
    assert sum(s.total_s for s in result.speakers) == pytest.approx(sum(e - s for s, e, _ in spoken.turns), rel=0.2)


@needs_espeak
def test_one_voice_is_one_speaker(engine, one):
    # Given one espeak-ng voice reading three sentences
    spoken, transcript = one
    # When it is diarized with no speaker count
    result = assign_speakers(transcript, engine.diarize(spoken.audio, DiarizeOptions(diarize=True)), engine.name)
    # Then everything is one speaker
    assert [s.speaker for s in result.speakers] == ["SPEAKER_00"]
    assert {seg.speaker for seg in result.segments} == {"SPEAKER_00"}


def test_one_voice_repeating_its_phrases_is_still_one_speaker(engine):
    # Given long.wav: one voice reading near-identical sections (its windows cluster by phrase)
    audio = audio_decode.decode(TESTDATA / "long.wav")
    # When it is diarized with no speaker count, Then it is one speaker, not one per phrase
    assert {t.speaker for t in engine.diarize(audio, DiarizeOptions(diarize=True))} == {"SPEAKER_00"}


@needs_espeak
def test_a_fixed_count_of_three_finds_the_third_voice(engine):
    # Given A-B-A-B, then C, A, B, C with a third espeak-ng voice
    third = speech_audio.Voice("en-us+f2", pitch=55, speed_wpm=140)
    turns = [
        *speech_audio.TWO_SPEAKER_TURNS[:4],
        (third, "I can drive the second load myself if the driver is busy."),
        *speech_audio.TWO_SPEAKER_TURNS[4:],
        (third, "Then it is settled, and I will see you both next week."),
    ]
    spoken = speech_audio.conversation(turns)
    # When it is diarized with num_speakers 3
    found = engine.diarize(spoken.audio, DiarizeOptions(diarize=True, num_speakers=3))
    # Then the turns follow the true speakers one to one
    assert [t.speaker[-1] for t in found] == [str(k) for _, _, k in spoken.turns]


@needs_espeak
def test_rttm_vtt_srt_text_and_markdown_carry_the_speakers(engine, two):
    # Given the diarized two-voice conversation
    spoken, transcript = two
    result = assign_speakers(transcript, engine.diarize(spoken.audio, DiarizeOptions(diarize=True)), engine.name)
    # When it is rendered in every format
    rttm, media = render(result, "rttm")
    vtt, srt, text, md, tsv = (render(result, f)[0] for f in ("vtt", "srt", "text", "md", "tsv"))
    # Then RTTM has one well-formed SPEAKER line per turn
    assert media.startswith("text/x-rttm")
    rows = [line.split() for line in rttm.splitlines()]
    assert len(rows) == len(result.turns) >= 4
    for row, turn in zip(rows, result.turns, strict=True):
        assert row[0] == "SPEAKER" and row[2] == "1" and row[7] == turn.speaker and len(row) == 10
        assert float(row[3]) == pytest.approx(turn.start, abs=1e-3) and float(row[4]) > 0
    # And VTT has voice tags, SRT and text a prefix at each change, Markdown a paragraph per turn
    assert "<v SPEAKER_00>" in vtt and "<v SPEAKER_01>" in vtt
    assert srt.count("SPEAKER_00: ") + srt.count("SPEAKER_01: ") >= 4
    assert [line.split(":")[0] for line in text.splitlines()][:4] == ["SPEAKER_00", "SPEAKER_01"] * 2
    assert md.count("**SPEAKER_0") == len(text.splitlines())
    # and TSV (whisper-asr-webservice's output=tsv) is Whisper's columns, speakers prefixed as in SRT
    header, *lines = tsv.splitlines()
    assert header == "start\tend\ttext" and all(len(line.split("\t")) == 3 for line in lines)
    assert sum(line.split("\t")[2].startswith("SPEAKER_0") for line in lines) >= 4


def test_silence_has_no_speaker(engine):
    # Given silence, Then there are no turns, and a transcript labelled with them has no speakers
    silence = np.zeros(3 * speech_audio.SAMPLE_RATE, dtype=np.float32)
    assert engine.diarize(silence, DiarizeOptions(diarize=True)) == []
    empty = assign_speakers(Transcript(text="", duration=3.0, segments=[]), [], engine.name)
    assert empty.speakers == [] and empty.turns == []


def test_min_speakers_above_max_is_refused():
    # Given contradictory speaker counts, Then they are refused with a typed error naming them
    with pytest.raises(InvalidSpeakerCount, match=r"min_speakers \(3\) is greater than max_speakers \(2\)") as e:
        parse_options({"diarize": True, "min_speakers": 3, "max_speakers": 2})
    assert e.value.code == "INVALID_SPEAKER_COUNT"
    with pytest.raises(InvalidSpeakerCount, match="num_speakers"):
        parse_options({"diarize": True, "num_speakers": 5, "max_speakers": 3})
    with pytest.raises(InvalidSpeakerCount):
        parse_options({"diarize": True, "num_speakers": 0})
    assert parse_options({"diarize": True, "min_speakers": 2}).bounds() == (2, 20)
    assert parse_options({"num_speakers": 3}).bounds() == (3, 3)


def test_words_take_the_speaker_they_overlap_most_or_the_nearest():
    # Given turns and a segment whose words straddle them, one in a gap
    turns = [Turn(0.0, 2.0, "SPEAKER_00"), Turn(3.0, 5.0, "SPEAKER_01")]
    words = [
        Word(start=0.1, end=0.5, word=" hi"),
        Word(start=1.8, end=2.6, word=" there"),
        Word(start=2.7, end=2.9, word=" so"),
        Word(start=3.2, end=4.9, word=" yes"),
    ]
    t = Transcript(
        text="hi there so yes",
        duration=5.0,
        segments=[Segment(id=0, start=0.1, end=4.9, text="hi there so yes", words=words)],
    )
    # When the speakers are assigned
    result = assign_speakers(t, turns, "test")
    # Then each word has the most-overlapping (or nearest) turn's speaker, the segment its words' majority
    assert [w.speaker for w in result.segments[0].words or []] == [
        "SPEAKER_00",
        "SPEAKER_00",
        "SPEAKER_01",
        "SPEAKER_01",
    ]
    assert result.segments[0].speaker == "SPEAKER_01"
    assert [(s.speaker, s.total_s) for s in result.speakers] == [("SPEAKER_00", 2.0), ("SPEAKER_01", 2.0)]
    # And the result still reads as a plain Transcript
    assert Transcript.model_validate_json(result.model_dump_json()).text == t.text


def test_the_offline_engine_is_the_default_and_nothing_is_downloaded(engine, monkeypatch):
    # Given no pipeline configured, Then the offline engine is chosen
    assert isinstance(select_engine(DiarizationSettings()), OfflineEngine)
    # Given a pipeline named but pyannote.audio missing, Then the offline engine still runs
    monkeypatch.setattr(diarization_pyannote, "installed", lambda: False)
    assert isinstance(select_engine(DiarizationSettings(model="pyannote/speaker-diarization-3.1")), OfflineEngine)
    # And a hub name is never fetched without the operator's permission and token
    with pytest.raises(DiarizationUnavailable, match="ALLOW_DOWNLOAD"):
        diarization_pyannote.checkpoint(DiarizationSettings(model="pyannote/speaker-diarization-3.1"))
