"""bus.retry: which NATS failures are retried (what a leader election or a
reconnect looks like to nats-py), and that the retry is bounded."""

from __future__ import annotations

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import (
    APIError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from bus.errors import BusUnavailable
from bus.retry import is_transient, retrying

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "err",
    [NatsTimeoutError(), NoRespondersError(), NoStreamResponseError(), ServiceUnavailableError(), APIError(code=503)],
)
def test_failover_symptoms_are_transient(err):
    assert is_transient(err)


@pytest.mark.parametrize("err", [KeyWrongLastSequenceError(), NotFoundError(), APIError(code=400), ValueError()])
def test_caller_errors_are_not_transient(err):
    assert not is_transient(err)


async def test_transient_failures_are_retried_until_they_pass():
    calls = []

    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise NoStreamResponseError()
        return "stored"

    assert await retrying(flaky, what="store", give_up_after_s=5) == "stored"
    assert len(calls) == 3


async def test_retry_gives_up_with_bus_unavailable_after_its_bound():
    async def leaderless():
        raise NatsTimeoutError()

    with pytest.raises(BusUnavailable):
        await retrying(leaderless, what="publish", give_up_after_s=0.5)


async def test_a_caller_error_is_raised_at_once():
    calls = []

    async def conflict():
        calls.append(1)
        raise KeyWrongLastSequenceError()

    with pytest.raises(KeyWrongLastSequenceError):
        await retrying(conflict, what="update", give_up_after_s=5)
    assert len(calls) == 1
