"""time_budget and waiting_on_dependency: a bound on work that leaves waits on dependencies out."""

from __future__ import annotations

import asyncio

import pytest

from tibridge.common.aio import Overrun, completed, time_budget, waiting_on_dependency

BUDGET = 0.1


async def test_work_past_its_budget_is_cancelled_with_overrun() -> None:
    reached_the_end = False

    async def slow_work() -> None:
        nonlocal reached_the_end
        async with time_budget(BUDGET):
            await asyncio.sleep(BUDGET * 20)
            reached_the_end = True

    with pytest.raises(Overrun) as raised:
        await slow_work()
    assert not reached_the_end
    assert raised.value.seconds == BUDGET


async def test_waits_on_dependencies_are_not_counted_even_nested() -> None:
    async with time_budget(BUDGET):
        with waiting_on_dependency():
            await asyncio.sleep(BUDGET * 2)
            with waiting_on_dependency():
                await asyncio.sleep(BUDGET)
            await asyncio.sleep(BUDGET)
        await asyncio.sleep(BUDGET / 10)


async def test_a_task_started_inside_the_budget_cannot_stop_its_clock() -> None:
    async def background_wait() -> None:
        with waiting_on_dependency():
            await asyncio.sleep(BUDGET * 30)

    async def work_with_a_helper() -> None:
        async with time_budget(BUDGET):
            helper = asyncio.create_task(background_wait())
            await asyncio.sleep(0)
            try:
                await asyncio.sleep(BUDGET * 20)
            finally:
                helper.cancel()

    with pytest.raises(Overrun):
        await work_with_a_helper()


async def test_a_timeout_of_the_work_itself_is_not_an_overrun() -> None:
    with pytest.raises(TimeoutError):
        async with time_budget(BUDGET * 50):
            await asyncio.wait_for(asyncio.Event().wait(), BUDGET / 10)


def test_waiting_outside_a_budget_does_nothing() -> None:
    with waiting_on_dependency():
        pass


async def test_a_cancelled_caller_waits_for_the_write_it_started_then_is_cancelled() -> None:
    written: list[str] = []
    release = asyncio.Event()

    async def write() -> None:
        await release.wait()
        written.append("watermark")

    caller = asyncio.create_task(completed(write()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # a second cancellation does not cut the wait short either
    await asyncio.sleep(0)
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert written == ["watermark"]


async def test_completed_hands_back_the_result() -> None:
    async def answer() -> int:
        return 42

    assert await completed(answer()) == 42
