"""How the collector's queries meet Log Analytics' limits: one seam, `QueryAttempts`, and its implementation.

Log Analytics allows 5 concurrent queries and 200 requests per 30 s per identity (external-apis §1) and answers
429 with Retry-After beyond either. `LimitedRetries` keeps every query of this process inside both limits, holds
every query back while any Retry-After announced to any of them runs, and retries 429, 5xx and timeouts a
bounded number of times. Everything the source sends goes through `QueryAttempts.call`, so an engine shared by
the three services can take this class's place without the source changing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from azure.core.exceptions import ServiceRequestError, ServiceResponseError

from tibridge.common.clock import Clock
from tibridge.common.http import RETRYABLE_STATUS, RetryPolicy, parse_retry_after
from tibridge.common.metrics import Tally

log = logging.getLogger(__name__)

# A connection that failed or timed out may be retried; any other exception is not ours to retry.
TRANSIENT_ERRORS = (TimeoutError, ServiceRequestError, ServiceResponseError)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None = None
    # The body was longer than the caller's byte budget; it was not read (and `body` is empty).
    over_budget: bool = False


class GaveUp(Exception):
    """The query kept failing; `cause` is the last status or error, `attempts` how many were sent."""

    def __init__(self, cause: str, attempts: int) -> None:
        super().__init__(f"{cause} after {attempts} attempts")
        self.cause = cause
        self.attempts = attempts


class QueryAttempts(Protocol):
    async def call(self, send: Callable[[], Awaitable[Answer]]) -> Answer:
        """Sends (and resends) one query within the service's limits until it is answered with anything but a
        retryable status; raises `GaveUp` when the attempts run out or a Retry-After is longer than we wait."""
        ...


class LimitedRetries:
    """Log Analytics' documented limits on our side, a shared Retry-After pause, and bounded retries."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Clock,
        *,
        max_concurrent: int,
        requests_per_window: int,
        window_seconds: float = 30.0,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._per_window = requests_per_window
        self._window_seconds = window_seconds
        # One place per query sent within the last window: when it was answered, or infinity while it is in
        # flight. The service counts a query from its arrival, which lies between our send and its answer, so a
        # place taken until the answer is never given back before the service gives back its own.
        self._places: list[float] = []
        self._answered = asyncio.Event()
        self._paused_until = 0.0
        self.retries = Tally("tibridge.collector.query_retries", "Log Analytics queries retried, by cause")

    async def call(self, send: Callable[[], Awaitable[Answer]]) -> Answer:
        policy = self._policy
        cause = "none"
        for attempt in range(1, policy.max_attempts + 1):
            try:
                answer = await self._send(send)
            except TRANSIENT_ERRORS as error:
                cause, delay = type(error).__name__, policy.backoff(attempt)
            else:
                if answer.status not in RETRYABLE_STATUS:
                    return answer
                announced = parse_retry_after(answer.retry_after)
                if announced is not None:
                    self._pause(announced)
                cause, delay = str(answer.status), announced if announced is not None else policy.backoff(attempt)
            if attempt == policy.max_attempts or delay > policy.max_retry_after_seconds:
                break
            self.retries.add(cause=cause)
            log.warning("Log Analytics query failed (%s); retry %d in %.1fs", cause, attempt, delay)
            await self._clock.sleep(delay)
        raise GaveUp(cause, attempt)

    async def _send(self, send: Callable[[], Awaitable[Answer]]) -> Answer:
        async with self._slots:
            place = await self._turn()
            try:
                return await send()
            finally:
                # Places in flight are alike (infinity): giving back any one of them is giving back this one.
                self._places[self._places.index(place)] = self._clock.monotonic()
                self._answered.set()

    async def _turn(self) -> float:
        """Waits until no Retry-After runs and the rate window has room, then takes a place in it."""
        while True:
            now = self._clock.monotonic()
            self._places = [answered for answered in self._places if answered > now - self._window_seconds]
            wait = self._paused_until - now
            if len(self._places) >= self._per_window:
                wait = max(wait, min(self._places) + self._window_seconds - now)
            if wait <= 0:
                self._places.append(math.inf)
                return math.inf
            if math.isinf(wait):  # the window is full of queries still in flight: wait for one to be answered
                self._answered.clear()
                await self._answered.wait()
            else:
                await self._clock.sleep(wait)

    def _pause(self, seconds: float) -> None:
        """No query of this process is sent until `seconds` from now (every caller waits, not only this one)."""
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)
