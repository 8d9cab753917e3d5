"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextvars import ContextVar


async def first_of(*waits: Awaitable[object]) -> None:
    """Returns once the first of `waits` is done, cancelling the rest (e.g. a sleep or a stop event)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Overrun(Exception):
    """Work ran past its `time_budget`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the work took longer than {seconds:g} s, not counting waits on dependencies")


class _Budget:
    """What is left of a task's time budget; it stands still while the task waits on a dependency."""

    def __init__(self, seconds: float, timeout: asyncio.Timeout) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timeout = timeout
        self._remaining = seconds
        self._since = self._loop.time()
        self._waits = 0
        self.open = True
        timeout.reschedule(self._since + seconds)

    def applies_here(self) -> bool:
        """Only the task that opened the budget spends it: tasks it starts inherit the context, not the budget."""
        return self.open and asyncio.current_task() is self._task and not self._timeout.expired()

    def pause(self) -> None:
        if self._waits == 0:
            self._remaining -= self._loop.time() - self._since
            self._timeout.reschedule(None)
        self._waits += 1

    def resume(self) -> None:
        self._waits -= 1
        if self._waits == 0 and self.applies_here():
            self._since = self._loop.time()
            self._timeout.reschedule(self._since + max(0.0, self._remaining))


_budget: ContextVar[_Budget | None] = ContextVar("tibridge_time_budget", default=None)


@contextlib.asynccontextmanager
async def time_budget(seconds: float) -> AsyncIterator[None]:
    """Bounds the enclosed work to `seconds` of event-loop time, not counting the time it spends inside
    `waiting_on_dependency()`; past it the work is cancelled and `Overrun` raised.

    Work that never awaits cannot be interrupted (nothing in asyncio can); it is only noticed at its next await.
    """
    timeout = asyncio.timeout(None)
    try:
        async with timeout:
            budget = _Budget(seconds, timeout)
            token = _budget.set(budget)
            try:
                yield
            finally:
                budget.open = False
                _budget.reset(token)
    except TimeoutError:
        if timeout.expired():
            raise Overrun(seconds) from None
        raise


@contextlib.contextmanager
def waiting_on_dependency() -> Iterator[None]:
    """Marks a wait for a dependency (a rate limiter, a Retry-After window, an API's answer, the bus): the time
    inside does not count against the enclosing `time_budget`. Outside one it does nothing."""
    budget = _budget.get()
    if budget is None or not budget.applies_here():
        yield
        return
    budget.pause()
    try:
        yield
    finally:
        budget.resume()
