"""Processors from installed packages: the `gpubus.processors` entry points.

A package registers `name = "module:factory"` in that group; the factory
takes a `ProcessorContext` and returns a `Processor` (docs/WRITING_A_PROCESSOR.md).
A plugin that cannot be loaded, raises, or declares something invalid is
logged with one ERROR line naming it and skipped: one broken package must
not keep a node from serving everything else, and must not go unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from schemas.names import KIND_RE, Lane
from schemas.processing import ENTRY_POINT_GROUP, Input, Processor, ProcessorContext

log = logging.getLogger("gpubus.processors.plugins")


class PluginRefused(Exception):
    """A plugin's processor declares something a node cannot serve."""


def check_declaration(proc: Processor, taken: Iterable[str]) -> None:
    """What routing and the heartbeat rely on: kinds are safe subject
    tokens not already served by another processor, lanes and inputs are
    the known ones. Raises `PluginRefused` naming the first problem."""
    kinds = set(getattr(proc, "kinds", ()) or ())
    if not kinds:
        raise PluginRefused("it declares no kinds")
    bad = sorted(k for k in kinds if not isinstance(k, str) or not KIND_RE.fullmatch(k))
    if bad:
        raise PluginRefused(f"kinds {bad} do not match {KIND_RE.pattern}")
    clash = sorted(kinds & set(taken))
    if clash:
        raise PluginRefused(f"kinds {clash} are already served by another processor")
    lanes = set(getattr(proc, "lanes", ()) or ())
    if not lanes or not lanes <= set(Lane):
        raise PluginRefused(f"lanes {sorted(map(str, lanes))} are not a non-empty subset of {[str(x) for x in Lane]}")
    inputs = set(getattr(proc, "inputs", ()) or ())
    if not inputs or not inputs <= set(Input):
        raise PluginRefused(
            f"inputs {sorted(map(str, inputs))} are not a non-empty subset of {[str(x) for x in Input]}"
        )
    for attr in ("device", "models", "staging", "run"):
        if not hasattr(proc, attr):
            raise PluginRefused(f"it has no `{attr}`")


def _load_one(ep: EntryPoint, ctx: ProcessorContext, taken: set[str]) -> Processor:
    factory = ep.load()
    proc: Processor = factory(ctx)
    check_declaration(proc, taken)
    return proc


def load(ctx: ProcessorContext, taken: Iterable[str] = (), *, group: str = ENTRY_POINT_GROUP) -> list[Processor]:
    """Every installed plugin's processor, in entry-point name order (a
    stable order: the first of two plugins claiming one kind wins, the
    other is refused). `taken` are the kinds the built-ins serve."""
    served = set(taken)
    found: list[Processor] = []
    for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
        where = f"{ep.name} = {ep.value}" + (f" (from {ep.dist.name})" if ep.dist is not None else "")
        try:
            proc = _load_one(ep, ctx, served)
        except Exception as e:  # any failure of foreign code: log it, skip it, keep the node
            log.error("processor plugin %s failed to load, skipped: %s: %s", where, type(e).__name__, e, exc_info=True)
            continue
        served |= proc.kinds
        found.append(proc)
        log.info(
            "processor plugin %s loaded: kinds=%s lanes=%s", where, sorted(proc.kinds), sorted(map(str, proc.lanes))
        )
    return found


def for_lane(procs: list[Processor], lane: Lane) -> list[Processor]:
    """The processors that suit a node's lane; a node of another lane does
    not serve (or advertise) the rest, so it is never sent their jobs."""
    kept = [p for p in procs if lane in p.lanes]
    for p in procs:
        if lane not in p.lanes:
            log.info(
                "kinds %s suit lanes %s: not served on this %s node", sorted(p.kinds), sorted(map(str, p.lanes)), lane
            )
    return kept
