"""The engine's slots go to jobs in the order they were taken
(bus/engine_slots.py), whatever order their inputs are ready in."""

from __future__ import annotations

import asyncio

from bus.engine_slots import EngineSlots
from bus.job_run import JobContext
from schemas.names import Lane


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


async def test_jobs_coming_are_those_with_a_slot_and_as_many_others_as_slots_are_free():
    # Given a node of three engine slots
    ctx = JobContext(
        js=None,  # type: ignore[arg-type]  # nothing here talks to NATS or runs a job
        processor=None,  # type: ignore[arg-type]
        pool=None,  # type: ignore[arg-type]
        events=None,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        queue_owner="u1",
        lane=Lane.CPU,
        node_id="n1",
        job_deadline_s=60,
        bus_retry_s=1,
        engine=EngineSlots(3),
    )
    slots = ctx.engine
    # one held by a job in the processor, one by a job on its way to it, and four more jobs taken
    async with slots.slot(slots.ticket()), slots.slot(slots.ticket()):
        ctx.before_slot, ctx.slotted = 4, 1
        # Then two may still come: the one with a slot, and one of the four
        # (the other three wait for slots nothing frees before they come)
        assert ctx.coming() == 2
