"""Reading Server-Sent Events (the few rules gpubus' stream uses)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: dict[str, Any]


def parse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """`event:` and `data:` lines up to a blank line make one event; `:`
    lines are comments (pings). Data is JSON."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(event, json.loads("\n".join(data)))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
