"""Answers a few seconds old shared by the callers meanwhile
(gateway/recent_answers.py: queue-info's recent failures)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.recent_answers import RecentAnswers

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_callers_meanwhile_share_one_read_until_it_is_too_old():
    clock = Clock()
    answers: RecentAnswers[str, int] = RecentAnswers(ttl_s=10, max_entries=100, clock=clock)
    reads = 0
    gate = asyncio.Event()

    async def read() -> int:
        nonlocal reads
        reads += 1
        await gate.wait()
        return reads

    # Given three requests of one owner at once, while the first read is under way
    waiting = [asyncio.create_task(answers.get("alice", read)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    # Then one read answers all three
    assert await asyncio.gather(*waiting) == [1, 1, 1] and reads == 1
    # and later ones within the freshness, and another owner has a read of its own
    clock.now = 9.9
    assert await answers.get("alice", read) == 1
    assert await answers.get("bob", read) == 2
    # When the answer is older than that, it is read again
    clock.now = 10.0
    assert await answers.get("alice", read) == 3


async def test_a_failed_read_is_not_kept_and_a_caller_gone_leaves_it_to_the_others():
    answers: RecentAnswers[str, int] = RecentAnswers(ttl_s=10, max_entries=100)
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("server away")

    with pytest.raises(RuntimeError):
        await answers.get("alice", failing)
    with pytest.raises(RuntimeError):
        await answers.get("alice", failing)
    assert calls == 2  # the next caller tried again

    gate = asyncio.Event()

    async def slow() -> int:
        await gate.wait()
        return 7

    first = asyncio.create_task(answers.get("bob", slow))
    second = asyncio.create_task(answers.get("bob", slow))
    await asyncio.sleep(0)
    first.cancel()  # its client went away
    gate.set()
    assert await second == 7


async def test_the_least_recently_asked_go_first():
    answers: RecentAnswers[str, str] = RecentAnswers(ttl_s=60, max_entries=2)
    reads: list[str] = []

    def reader(key: str):
        async def read() -> str:
            reads.append(key)
            return key

        return read

    for key in ("a", "b", "a", "c", "a", "b"):
        await answers.get(key, reader(key))
    # a kept (asked again before c came), b pushed out by c, then read again
    assert reads == ["a", "b", "c", "b"]
