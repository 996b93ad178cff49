"""What a node says about itself every few seconds (KV `nodes`)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from schemas.jobs import ID_MAX, NAME_MAX, NODE_ID_MAX, SCHEMA_VERSION
from schemas.names import JobKind, Lane

URL_MAX = 512
MAX_KINDS = 64
METRICS_SCHEMES = frozenset({"http", "https"})
MAX_FEATURES = 16
# A feature a node serves beyond its kinds (`diarization`), and what serves
# it there (engine names): bounded, an untrusted node writes them.
FeatureName = Annotated[str, Field(min_length=1, max_length=32)]
Offers = Annotated[list[Annotated[str, Field(max_length=NAME_MAX)]], Field(max_length=16)]


class NodeHeartbeat(BaseModel):
    v: int = SCHEMA_VERSION
    node_id: str = Field(min_length=1, max_length=NODE_ID_MAX)
    owner: str = Field(max_length=ID_MAX)  # the queue owner: a user id, or `shared`
    lane: Lane
    device: str = Field(max_length=NAME_MAX)
    kinds: list[JobKind] = Field(max_length=MAX_KINDS)  # what the node serves, plugins' kinds too
    models: list[str] = Field(max_length=64)
    # What the node serves beyond its kinds, e.g. {"diarization": ["pyannote (…)"]}:
    # a job whose options need a feature (`TranscribeOptions.needs`) goes only where it is.
    features: dict[FeatureName, Offers] = Field(default_factory=dict, max_length=MAX_FEATURES)
    capacity: int
    busy: int
    last_seen: float
    started_at: float
    metrics_url: str | None = Field(None, max_length=URL_MAX)
    jobs_done: int = 0


def metrics_url_refusal(url: str) -> str | None:
    """Why a node's metrics_url may not be handed to Prometheus, or None.
    Prometheus scrapes whatever the gateway lists, so a node naming any
    address or scheme would have it send requests there."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in METRICS_SCHEMES:
        return f"scheme {parts.scheme!r} is not http or https"
    if parts.username is not None or parts.password is not None:
        return "it carries userinfo"
    if not parts.hostname or port is None:
        return "it has no host and port"
    if parts.query or parts.fragment:
        return "it has a query or fragment"
    return None
