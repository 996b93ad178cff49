"""Who spoke when: the diarization options and the speaker-labelled result.

The result models extend `schemas.results` rather than edit it, so a
diarized transcript is still a valid `Transcript` (every reader of the plain
JSON keeps working) and carries `speaker` on each segment and word on top.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, ValidationError, model_validator

from schemas.errors import InvalidInput
from schemas.names import Kind
from schemas.results import Segment, Transcript, Word

MAX_SPEAKERS = 20  # a bound on the clustering's search, far above any meeting's
# The feature a node advertises in its heartbeat (`NodeHeartbeat.features`)
# when it can diarize, with the engines it runs; a job with `diarize` needs it.
DIARIZATION = "diarization"
# The kinds with audio to diarize: anything else (a document, a web page, a
# plugin's kind) asking for `diarize` is refused at the door.
DIARIZED_KINDS = frozenset({Kind.AUDIO, Kind.VIDEO, Kind.URL})


class InvalidSpeakerCount(InvalidInput):
    """The speaker-count options contradict each other."""

    code = "INVALID_SPEAKER_COUNT"


class DiarizeOptions(BaseModel):
    """`num_speakers` fixes the count; otherwise it is chosen automatically
    between `min_speakers` and `max_speakers`."""

    diarize: bool = False
    num_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    min_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(default=None, ge=1, le=MAX_SPEAKERS)

    @model_validator(mode="after")
    def _counts_agree(self) -> Self:
        lo, hi, n = self.min_speakers, self.max_speakers, self.num_speakers
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_speakers ({lo}) is greater than max_speakers ({hi})")
        if n is not None and ((lo is not None and n < lo) or (hi is not None and n > hi)):
            raise ValueError(f"num_speakers ({n}) is outside min_speakers..max_speakers ({lo}..{hi})")
        return self

    def bounds(self) -> tuple[int, int]:
        """(fewest, most) speakers the engine may return."""
        if self.num_speakers is not None:
            return self.num_speakers, self.num_speakers
        return self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS


def parse_options(raw: dict[str, object]) -> DiarizeOptions:
    """Options from a request, with contradictions as one typed error whose
    message names the fields, not a pydantic traceback."""
    try:
        return DiarizeOptions.model_validate(raw)
    except ValidationError as e:
        detail = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        raise InvalidSpeakerCount(detail) from e


class SpeakerWord(Word):
    speaker: str | None = None


class SpeakerSegment(Segment):
    words: list[SpeakerWord] | None = None  # type: ignore[assignment]  # narrowed: each word has a speaker
    speaker: str | None = None


class SpeakerTotal(BaseModel):
    speaker: str
    total_s: float


class SpeakerTurn(BaseModel):
    """One stretch of one speaker, as the engine heard it (RTTM's unit)."""

    start: float
    end: float
    speaker: str


class DiarizedTranscript(Transcript):
    segments: list[SpeakerSegment]  # type: ignore[assignment]  # narrowed: each segment has a speaker
    speakers: list[SpeakerTotal]
    turns: list[SpeakerTurn]
    diarization_engine: str
