"""Processor factories that a node must refuse without stopping."""

from __future__ import annotations

from typing import Any


def make_processor(ctx: Any) -> Any:
    raise RuntimeError("this plugin is broken on purpose")


class _BadKind:
    kinds = frozenset({"Not.A.Kind"})  # would widen a subject filter
    lanes = frozenset({"cpu"})
    inputs = frozenset({"file"})
    models: list[str] = []
    device = "cpu"


def bad_kind(ctx: Any) -> Any:
    return _BadKind()
