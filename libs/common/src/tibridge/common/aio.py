"""Small asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


async def first_of(*waits: Awaitable[object]) -> None:
    """Returns once the first of `waits` is done, cancelling the rest (e.g. a sleep or a stop event)."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def completed(work: Awaitable[T]) -> T:
    """Awaits `work` to its end even when the caller is cancelled meanwhile; the cancellation goes on after. For a
    write that lands once started (a file written in a thread, a request on the wire), so that whoever runs next
    reads it rather than racing it."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller sees
        raise


class Overrun(Exception):
    """Work ran past its `time_budget`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the work took longer than {seconds:g} s, not counting waits on dependencies")


# How often open budgets are looked at, at most; a budget shorter than four times this is looked at four times
# within its length. An overrun is noticed at most this late.
WATCH_INTERVAL_SECONDS = 1.0


class _Budget:
    """What is left of a task's time budget; it stands still while the task waits on a dependency.

    Entering and leaving a wait only moves numbers; the loop's `_Watch` looks at every open budget now and then
    and cancels the task of one that has run out, as `asyncio.timeout` would."""

    def __init__(self, seconds: float, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.seconds = seconds
        self._loop = loop
        self._task = task
        self._remaining = seconds
        self._since = loop.time()
        self._waits = 0
        self._cancelling = task.cancelling()
        self.open = True
        self.expired = False

    def applies_here(self) -> bool:
        """Only the task that opened the budget spends it: tasks it starts inherit the context, not the budget."""
        return self.open and not self.expired and asyncio.current_task() is self._task

    def pause(self) -> None:
        if self._waits == 0:
            self._remaining -= self._loop.time() - self._since
        self._waits += 1

    def resume(self) -> None:
        self._waits -= 1
        if self._waits == 0:
            self._since = self._loop.time()

    def check(self, now: float) -> None:
        """Cancels the task once the budget is spent (a task waiting on a dependency spends none)."""
        if self._waits == 0 and self._remaining - (now - self._since) <= 0:
            self.expired = True
            self._task.cancel()

    def overran(self, exc_type: type[BaseException] | None) -> bool:
        """On leaving: whether the work ends because the budget cancelled it (that cancellation is then taken
        back, as `asyncio.timeout` takes back its own)."""
        self.open = False
        return self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError


class _Watch:
    """The open budgets of one event loop, looked at together: one timer for all of them, not one per budget."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._budgets: set[_Budget] = set()
        self._interval = WATCH_INTERVAL_SECONDS
        self._handle: asyncio.TimerHandle | None = None

    def add(self, budget: _Budget) -> None:
        self._budgets.add(budget)
        interval = min(WATCH_INTERVAL_SECONDS, budget.seconds / 4)
        if self._handle is None or interval < self._interval:
            self._interval = interval
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_later(interval, self._look)

    def discard(self, budget: _Budget) -> None:
        self._budgets.discard(budget)

    def _look(self) -> None:
        now = self._loop.time()
        for budget in list(self._budgets):
            budget.check(now)
        if self._budgets:
            self._handle = self._loop.call_later(self._interval, self._look)
        else:
            self._handle = None
            self._interval = WATCH_INTERVAL_SECONDS


_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()
_budget: ContextVar[_Budget | None] = ContextVar("tibridge_time_budget", default=None)


class time_budget:
    """Bounds the enclosed work to `seconds` of event-loop time, not counting the time it spends inside
    `waiting_on_dependency()`; past it the work is cancelled and `Overrun` raised (noticed within
    WATCH_INTERVAL_SECONDS, or a quarter of `seconds` when that is shorter).

    Work that never awaits cannot be interrupted (nothing in asyncio can); it is only noticed at its next await.
    A class rather than a generator, and no timer of its own: it is entered once per message.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("time_budget must be used inside a task")
        self._budget = _Budget(self._seconds, loop, task)
        self._watch = _watches.get(loop) or _watches.setdefault(loop, _Watch(loop))
        self._watch.add(self._budget)
        self._token = _budget.set(self._budget)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _budget.reset(self._token)
        self._watch.discard(self._budget)
        if self._budget.overran(exc_type):
            raise Overrun(self._seconds) from None


class waiting_on_dependency:
    """Marks a wait for a dependency (a rate limiter, a Retry-After window, an API's answer, the bus): the time
    inside does not count against the enclosing `time_budget`. Outside one it does nothing."""

    __slots__ = ("_budget",)

    def __enter__(self) -> None:
        budget = _budget.get()
        self._budget = budget if budget is not None and budget.applies_here() else None
        if self._budget is not None:
            self._budget.pause()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._budget is not None:
            self._budget.resume()
