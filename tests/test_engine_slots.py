"""The engine's slots go to jobs in the order they were taken
(bus/engine_slots.py), whatever order their inputs are ready in."""

from __future__ import annotations

import asyncio

from bus.engine_slots import EngineSlots


async def test_slots_go_in_ticket_order_and_a_given_up_turn_blocks_nobody():
    slots = EngineSlots(1)
    first, second, third = slots.ticket(), slots.ticket(), slots.ticket()
    order: list[int] = []

    async def job(ticket: int, ready_after_s: float) -> None:
        await asyncio.sleep(ready_after_s)  # its input is fetched and decoded
        async with slots.slot(ticket):
            order.append(ticket)
            await asyncio.sleep(0.01)

    # Given the third job ready first, the first last, and the second never wanting a slot
    jobs = [asyncio.create_task(job(third, 0.0)), asyncio.create_task(job(first, 0.05))]
    await asyncio.sleep(0.02)
    await slots.give_up(second)
    await asyncio.wait_for(asyncio.gather(*jobs), 2)
    # Then the first still ran first, and the third after it
    assert order == [first, third]


async def test_a_job_cancelled_while_waiting_gives_its_turn_up():
    slots = EngineSlots(1)
    holder, waiter, later = slots.ticket(), slots.ticket(), slots.ticket()
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot(holder):
            await release.wait()

    async def wait_for_slot(ticket: int) -> None:
        async with slots.slot(ticket):
            pass

    # Given one job on the engine and the next one waiting for it
    running = asyncio.create_task(hold())
    waiting = asyncio.create_task(wait_for_slot(waiter))
    await asyncio.sleep(0.01)
    # When the waiting one is cancelled (its job was) and the engine frees up
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    release.set()
    await running
    # Then the job after it gets the slot
    await asyncio.wait_for(wait_for_slot(later), 2)
