"""Rendering a stored transcript: exact SRT / WebVTT timing syntax."""

from __future__ import annotations

import json
import re

import pytest

from schemas.errors import InvalidInput
from schemas.formats import render
from schemas.results import Segment, Transcript, Word

SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3}"
VTT_TIME = r"\d{2}:\d{2}:\d{2}\.\d{3}"


def transcript() -> Transcript:
    return Transcript(
        text="Hello world. Second line. Late.",
        language="en",
        language_probability=0.98,
        duration=3725.5,
        segments=[
            Segment(id=0, start=0.0, end=1.5, text=" Hello world.", words=[Word(start=0.0, end=0.6, word=" Hello")]),
            Segment(id=1, start=59.9996, end=61.2344, text=" Second line."),
            Segment(id=2, start=3723.0, end=3725.5, text=" Late."),
        ],
        model="tiny.en",
        device="cpu",
    )


def test_srt_exact():
    body, media_type = render(transcript(), "srt")
    assert media_type.startswith("application/x-subrip")
    assert body == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello world.\n"
        "\n"
        "2\n00:01:00,000 --> 00:01:01,234\nSecond line.\n"
        "\n"
        "3\n01:02:03,000 --> 01:02:05,500\nLate.\n"
    )


def test_vtt_exact():
    body, media_type = render(transcript(), "vtt")
    assert media_type.startswith("text/vtt")
    assert body == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello world.\n"
        "\n"
        "00:01:00.000 --> 00:01:01.234\nSecond line.\n"
        "\n"
        "01:02:03.000 --> 01:02:05.500\nLate.\n"
    )


def test_tsv_exact_as_whisper_writes_it():
    # integer milliseconds, a header, tabs in the text made spaces (they would split a column)
    t = transcript()
    t.segments[1].text = " Second\tline."
    body, media_type = render(t, "tsv")
    assert media_type.startswith("text/tab-separated-values")
    assert body == "start\tend\ttext\n0\t1500\tHello world.\n60000\t61234\tSecond line.\n3723000\t3725500\tLate.\n"


def check_srt_syntax(body: str) -> int:
    """Every block: index, `start --> end` with comma milliseconds, text; blocks
    numbered from 1 and separated by exactly one blank line."""
    blocks = body.rstrip("\n").split("\n\n")
    for i, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(i), block
        assert re.fullmatch(rf"{SRT_TIME} --> {SRT_TIME}", lines[1]), block
        assert lines[2].strip(), block
    return len(blocks)


def check_vtt_syntax(body: str) -> int:
    assert body.startswith("WEBVTT\n\n")
    blocks = body[len("WEBVTT\n\n") :].rstrip("\n").split("\n\n")
    for block in blocks:
        lines = block.split("\n")
        assert re.fullmatch(rf"{VTT_TIME} --> {VTT_TIME}", lines[0]), block
        assert lines[1].strip(), block
    return len(blocks)


def test_syntax_checkers_accept_the_renderings():
    assert check_srt_syntax(render(transcript(), "srt")[0]) == 3
    assert check_vtt_syntax(render(transcript(), "vtt")[0]) == 3


def test_negative_times_clamp_to_zero():
    t = Transcript(text="x", duration=1, segments=[Segment(id=0, start=-0.01, end=0.0004, text="x")])
    assert render(t, "srt")[0] == "1\n00:00:00,000 --> 00:00:00,000\nx\n"


def test_text_json_and_markdown():
    t = transcript()
    assert render(t, "text")[0] == "Hello world. Second line. Late.\n"
    data = json.loads(render(t, "json")[0])
    assert data["language"] == "en" and data["segments"][0]["words"][0]["word"] == " Hello"
    assert "words" not in data["segments"][1]
    md = render(t, "md")[0]
    assert md.startswith("# Transcript\n\n- duration: 3725.5 s\n- language: en\n- model: tiny.en on cpu\n")
    assert "**[01:02:03]** Late." in md


def test_unknown_format_is_invalid_input():
    with pytest.raises(InvalidInput):
        render(transcript(), "docx")
