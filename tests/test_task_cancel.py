"""bus/task_cancel.py: a background loop whose cancel Python 3.11's
`asyncio.wait_for` swallowed still stops (3.12's wait_for no longer
swallows it; the images run 3.11)."""

from __future__ import annotations

import asyncio
import sys

from bus.task_cancel import cancel_and_wait


async def _loop_on_wait_for(queue: asyncio.Queue[int], rounds: list[int]) -> None:
    """The shape of every pull loop: go round, waiting through wait_for
    (as nats-py's `next_msg` does)."""
    while True:
        rounds.append(await asyncio.wait_for(queue.get(), timeout=10))


async def _a_loop_whose_cancel_meets_its_message() -> tuple[asyncio.Task[None], list[int]]:
    """A loop cancelled in the very loop step its message arrives in."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    rounds: list[int] = []
    task = asyncio.create_task(_loop_on_wait_for(queue, rounds))
    await asyncio.sleep(0)  # it waits on the queue
    queue.put_nowait(1)  # the message and the cancel land together
    task.cancel()
    await asyncio.sleep(0.05)
    return task, rounds


async def test_one_cancel_is_swallowed_on_python_3_11() -> None:
    # Given the race the helper exists for
    task, rounds = await _a_loop_whose_cancel_meets_its_message()
    try:
        if sys.version_info < (3, 12):
            # Then the cancel was spent and the loop went round again (3.10 and 3.11 here)
            assert not task.done() and rounds == [1]
        else:
            # (3.12 rewrote wait_for; 3.12.1 and 3.13.0 here end the loop)
            assert task.cancelled() and rounds == []
    finally:
        await cancel_and_wait(task)


async def test_cancel_and_wait_stops_a_loop_that_swallowed_its_cancel() -> None:
    # Given a loop that swallowed its cancel
    task, _ = await _a_loop_whose_cancel_meets_its_message()
    # When it is stopped with the helper
    await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    # Then it has ended, cancelled
    assert task.cancelled()


async def test_cancel_and_wait_consumes_a_task_that_failed_or_finished() -> None:
    async def fails() -> None:
        raise RuntimeError("its own to log")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(failed)
    await cancel_and_wait(finished)
    await cancel_and_wait(None)
    assert failed.done() and finished.done()
