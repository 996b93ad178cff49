"""Errors of the bus layer."""

from __future__ import annotations

from schemas.errors import GpubusError, Unavailable


class BusError(GpubusError):
    """Something went wrong talking to NATS."""

    code = "BUS_ERROR"


class BusUnavailable(Unavailable):
    """NATS stayed away past the bound; nothing was accepted."""

    code = "BUS_UNAVAILABLE"


class CasConflict(BusError):
    """A compare-and-set lost a race too many times in a row."""

    code = "CAS_CONFLICT"
