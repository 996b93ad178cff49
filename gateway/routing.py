"""Which lane a job goes to, and why (the reason is shown to the user).

GPU only when it is asked for (or the mode requires it), the kind benefits,
a GPU node of the owner is live, and its lane is not backed up; otherwise the
owner's CPU lane if the owner runs a CPU node, else the shared CPU pool.
Every routing decision of the gateway side is made here, once: submit and
retry call `choose`, the fallback router gets `cpu_queue` through the state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bus.settings import GpuMode
from schemas.jobs import JobRecord
from schemas.names import GPU_KINDS, SHARED, Kind, Lane


@dataclass(frozen=True)
class Route:
    lane: Lane
    queue_owner: str
    reason: str


@dataclass(frozen=True)
class Fleet:
    """What the gateway knows about the owner's nodes right now. The GPU
    backlog costs a consumer-info request, so it is asked only when the GPU
    lane is still a candidate."""

    owner_gpu_live: bool
    owner_cpu_live: bool
    gpu_backlog: Callable[[], Awaitable[int]]


def gpu_wanted(kind: Kind, requested: bool, mode: GpuMode) -> tuple[bool, str]:
    if mode is GpuMode.OFF:
        return False, "gpu_mode_off"
    if kind not in GPU_KINDS:
        return False, "kind_not_gpu_beneficial"
    if mode is GpuMode.REQUIRED or requested:
        return True, "gpu_requested"
    return False, "gpu_not_requested"


def gpu_wish(rec: JobRecord) -> bool:
    """The user's GPU wish as the record keeps it; records from before it
    was kept fall back to what the lane and a fallback tell."""
    if rec.gpu_requested is not None:
        return rec.gpu_requested
    return rec.lane is Lane.GPU or rec.fallback is not None


def cpu_queue(owner: str, fleet: Fleet) -> str:
    """The owner's CPU lane if they run a CPU node, else the shared pool."""
    return owner if fleet.owner_cpu_live else SHARED


def cpu_route(owner: str, fleet: Fleet, reason: str) -> Route:
    return Route(Lane.CPU, cpu_queue(owner, fleet), reason)


async def choose(
    owner: str, kind: Kind, requested: bool, mode: GpuMode, fleet: Fleet, max_backlog: int, *, required: bool = False
) -> Route:
    """`requested` is the user's own wish (the job record keeps it), so a
    retry is routed as the submission was, on the fleet as it is now.
    `required` (`gpu: "required"`) takes the GPU lane whatever the fleet:
    the start deadline fails it if no GPU node takes it in time."""
    wanted, reason = gpu_wanted(kind, requested or required, mode)
    if not wanted:
        return cpu_route(owner, fleet, reason)
    if required:
        return Route(Lane.GPU, owner, "gpu_required")
    if not fleet.owner_gpu_live:
        return cpu_route(owner, fleet, "no_live_gpu_node")
    if await fleet.gpu_backlog() >= max_backlog:
        return cpu_route(owner, fleet, "gpu_backlog_full")
    return Route(Lane.GPU, owner, "gpu_requested")
