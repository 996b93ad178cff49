"""Which Whisper models a user can ask for: those some live node serves.

Nodes advertise their models in their registry heartbeat; a user can reach
their own nodes and the shared pool. Asking for anything else is a 422
(on OpenAI's endpoints a 404 `model_not_found`) that names what is
available, rather than a job that waits for a node that never comes. `whisper-1` (OpenAI's name) and `default` mean the fleet's default.
"""

from __future__ import annotations

from gateway.state import GatewayState
from schemas.errors import ModelNotServed
from schemas.jobs import TranscribeOptions
from schemas.names import SHARED

DEFAULT_ALIASES = frozenset({"whisper-1", "default", ""})


def available(st: GatewayState, owner: str) -> list[str]:
    return sorted({m for n in st.nodes.live() if n.owner in (owner, SHARED) for m in n.models})


def resolve(st: GatewayState, owner: str, options: TranscribeOptions) -> TranscribeOptions:
    """The options with the model checked (None = whatever the node runs)."""
    model = options.model
    if model is None:
        return options
    if model.strip().lower() in DEFAULT_ALIASES:
        return options.model_copy(update={"model": None})
    served = available(st, owner)
    if model not in served:
        offer = ", ".join(served) if served else "none (no live node)"
        raise ModelNotServed(f"options.model: {model!r} is not served by any live node; available: {offer}")
    return options
