"""Which lane a job goes to, and why (the reason is shown to the user).

GPU only when it is asked for (or the mode requires it), the kind benefits,
a GPU node of the owner is live, and its lane is not backed up; otherwise the
owner's CPU lane if the owner runs a CPU node, else the shared CPU pool.
Every routing decision of the gateway side is made here, once: submit and
retry call `choose`, the fallback router gets `cpu_queue` through the state.

A kind outside `names.WAITING_KINDS` (documents, web pages, images, a
plugin's) is accepted only while a live node of the owner or of the shared
pool serves it (`check_served`, 422 `KIND_NOT_SERVED`), and takes the GPU
lane only where a live GPU node of the owner advertises it. A built-in
kind's GPU benefit is `GPU_KINDS` (images among them); a document's is a GPU
node that advertises documents (it does only with docling's layout models
installed), else it goes to CPU as `no_gpu_document_engine`; a plugin kind's
is what its processor declares, seen as the lanes of the nodes that
advertise it (a node loads only processors that suit its lane), so a kind
only CPU nodes serve never takes the GPU lane, and one only the owner's GPU
node serves goes there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bus.settings import GpuMode
from schemas.errors import InvalidInput
from schemas.jobs import JobRecord
from schemas.names import BUILTIN_KINDS, GPU_KINDS, SHARED, WAITING_KINDS, Kind, Lane

KIND_NOT_SERVED = "KIND_NOT_SERVED"
FEATURE_NOT_SERVED = "FEATURE_NOT_SERVED"


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
    # The kinds the live nodes advertise: the owner's GPU nodes, the
    # owner's CPU nodes, the shared pool's.
    gpu_kinds: frozenset[str] = field(default_factory=frozenset)
    cpu_kinds: frozenset[str] = field(default_factory=frozenset)
    shared_kinds: frozenset[str] = field(default_factory=frozenset)
    # The features (`NodeHeartbeat.features`: diarization) the same nodes serve.
    gpu_features: frozenset[str] = field(default_factory=frozenset)
    cpu_features: frozenset[str] = field(default_factory=frozenset)
    shared_features: frozenset[str] = field(default_factory=frozenset)

    @property
    def served(self) -> frozenset[str]:
        return self.gpu_kinds | self.cpu_kinds | self.shared_kinds

    @property
    def features(self) -> frozenset[str]:
        return self.gpu_features | self.cpu_features | self.shared_features

    def gpu_serves(self, kind: str, needs: frozenset[str]) -> bool:
        return _serves(self.gpu_kinds, self.gpu_features, kind, needs)

    def cpu_serves(self, kind: str, needs: frozenset[str]) -> bool:
        return _serves(self.cpu_kinds, self.cpu_features, kind, needs)

    def shared_serves(self, kind: str, needs: frozenset[str]) -> bool:
        return _serves(self.shared_kinds, self.shared_features, kind, needs)


def _serves(kinds: frozenset[str], features: frozenset[str], kind: str, needs: frozenset[str]) -> bool:
    """Whether some live node of one queue takes the job: a kind every node
    runs (`WAITING_KINDS`), any other only where advertised; and the
    features it needs."""
    return (kind in WAITING_KINDS or kind in kinds) and needs <= features


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) if names else "none"


def check_served(kind: str, fleet: Fleet, needs: frozenset[str] = frozenset()) -> None:
    """A job of a kind no live node can take would wait for ever: 422 naming
    what is served, as for models (gateway/fleet_models.py). A job whose
    options need a feature (`TranscribeOptions.needs`: diarization) waits
    for no node: some live node must serve it now, even for a waiting kind."""
    if kind not in WAITING_KINDS and kind not in fleet.served:
        offer = ", ".join(sorted(fleet.served)) if fleet.served else "none (no live node)"
        raise InvalidInput(f"kind: {kind!r} is not served by any live node; served: {offer}", code=KIND_NOT_SERVED)
    missing = needs - fleet.features
    if missing:
        raise InvalidInput(
            f"options: {_listed(missing)} is not served by any live node of yours or of the shared pool; "
            f"features served: {_listed(fleet.features)}",
            code=FEATURE_NOT_SERVED,
        )


def gpu_wanted(kind: str, requested: bool, mode: GpuMode, gpu_kinds: frozenset[str]) -> tuple[bool, str]:
    """A built-in kind outside GPU_KINDS benefits only where a GPU node of
    the owner advertises it (`gpu_kinds`): documents, with docling's
    layout models installed there."""
    if mode is GpuMode.OFF:
        return False, "gpu_mode_off"
    if kind in BUILTIN_KINDS and kind not in GPU_KINDS and kind not in gpu_kinds:
        return False, "no_gpu_document_engine" if kind == Kind.DOCUMENT else "kind_not_gpu_beneficial"
    if mode is GpuMode.REQUIRED or requested:
        return True, "gpu_requested"
    return False, "gpu_not_requested"


def gpu_wish(rec: JobRecord) -> bool:
    """The user's GPU wish as the record keeps it; records from before it
    was kept fall back to what the lane and a fallback tell."""
    if rec.gpu_requested is not None:
        return rec.gpu_requested
    return rec.lane is Lane.GPU or rec.fallback is not None


def cpu_queue(owner: str, fleet: Fleet, kind: str | None = None, needs: frozenset[str] = frozenset()) -> str:
    """The owner's CPU lane if they run a CPU node, else the shared pool; for
    a plugin kind, a kind not every node serves, or a job that needs a
    feature, the one of the two whose nodes serve it."""
    if kind is not None and (kind not in WAITING_KINDS or needs):
        if fleet.cpu_serves(kind, needs):
            return owner
        if fleet.shared_serves(kind, needs):
            return SHARED
    return owner if fleet.owner_cpu_live else SHARED


def cpu_route(
    owner: str, fleet: Fleet, reason: str, kind: str | None = None, needs: frozenset[str] = frozenset()
) -> Route:
    return Route(Lane.CPU, cpu_queue(owner, fleet, kind, needs), reason)


async def choose(
    owner: str,
    kind: str,
    requested: bool,
    mode: GpuMode,
    fleet: Fleet,
    max_backlog: int,
    *,
    required: bool = False,
    needs: frozenset[str] = frozenset(),
) -> Route:
    """`requested` is the user's own wish (the job record keeps it), so a
    retry is routed as the submission was, on the fleet as it is now.
    `required` (`gpu: "required"`) takes the GPU lane whatever the fleet:
    the start deadline fails it if no GPU node takes it in time. A job
    that `needs` a feature goes only to a lane whose live nodes serve it
    (a GPU-required one is refused if the owner's GPU nodes do not)."""
    advertised = kind not in WAITING_KINDS  # served only where a node says so
    if (
        (advertised or needs)
        and mode is not GpuMode.OFF
        and fleet.gpu_serves(kind, needs)
        and not (fleet.cpu_serves(kind, needs) or fleet.shared_serves(kind, needs))
    ):
        return Route(Lane.GPU, owner, "kind_served_only_on_gpu" if advertised else "feature_served_only_on_gpu")
    wanted, reason = gpu_wanted(kind, requested or required, mode, fleet.gpu_kinds)
    if not wanted:
        return cpu_route(owner, fleet, reason, kind, needs)
    unserved_on_gpu = needs - fleet.gpu_features
    if required:
        if unserved_on_gpu:
            raise InvalidInput(
                f"gpu: required, but no live GPU node of yours serves {_listed(unserved_on_gpu)}",
                code=FEATURE_NOT_SERVED,
            )
        return Route(Lane.GPU, owner, "gpu_required")
    if not fleet.owner_gpu_live:
        return cpu_route(owner, fleet, "no_live_gpu_node", kind, needs)
    if advertised and kind not in fleet.gpu_kinds:
        return cpu_route(owner, fleet, "kind_not_served_on_gpu", kind, needs)
    if unserved_on_gpu:
        return cpu_route(owner, fleet, "feature_not_served_on_gpu", kind, needs)
    if await fleet.gpu_backlog() >= max_backlog:
        return cpu_route(owner, fleet, "gpu_backlog_full", kind, needs)
    return Route(Lane.GPU, owner, "gpu_requested")
