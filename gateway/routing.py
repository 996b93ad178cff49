"""Which lane a job goes to, and why (the reason is shown to the user).

GPU only when it is asked for (or the mode requires it), the kind benefits,
a GPU node of the owner is live, and its lane is not backed up; otherwise the
owner's CPU lane if the owner runs a CPU node, else the shared CPU pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.settings import GpuMode
from schemas.names import GPU_KINDS, SHARED, Kind, Lane


@dataclass(frozen=True)
class Route:
    lane: Lane
    queue_owner: str
    reason: str


@dataclass(frozen=True)
class Fleet:
    """What the gateway knows about the owner's nodes right now."""

    owner_gpu_live: bool
    owner_cpu_live: bool
    gpu_backlog: int


def gpu_wanted(kind: Kind, requested: bool, mode: GpuMode) -> tuple[bool, str]:
    if mode is GpuMode.OFF:
        return False, "gpu_mode_off"
    if kind not in GPU_KINDS:
        return False, "kind_not_gpu_beneficial"
    if mode is GpuMode.REQUIRED or requested:
        return True, "gpu_requested"
    return False, "gpu_not_requested"


def cpu_route(owner: str, fleet: Fleet, reason: str) -> Route:
    return Route(Lane.CPU, owner if fleet.owner_cpu_live else SHARED, reason)


def choose(owner: str, kind: Kind, requested: bool, mode: GpuMode, fleet: Fleet, max_backlog: int) -> Route:
    wanted, reason = gpu_wanted(kind, requested, mode)
    if not wanted:
        return cpu_route(owner, fleet, reason)
    if not fleet.owner_gpu_live:
        return cpu_route(owner, fleet, "no_live_gpu_node")
    if fleet.gpu_backlog >= max_backlog:
        return cpu_route(owner, fleet, "gpu_backlog_full")
    return Route(Lane.GPU, owner, "gpu_requested")
