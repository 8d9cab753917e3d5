"""HTTP resilience shared by every API client: bounded retries that honour Retry-After, and a rate limiter
that a 429 pauses for the announced time, so no request is sent inside a Retry-After window."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from tibridge.common.clock import Clock, SystemClock
from tibridge.common.metrics import Tally

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay_seconds: float
    max_delay_seconds: float = 30.0
    # A Retry-After longer than this is treated as an outage: give up and let the bus redeliver later.
    max_retry_after_seconds: float = 300.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with full jitter for attempt 1, 2, …"""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


class RateLimiter:
    """A token bucket (`rate` requests per second, `burst` at once) with a pause every caller honours.

    `pause(seconds)` — called on any 429 — holds every acquirer of this process until the window ends.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Clock | None = None) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self._rate = rate
        self._burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock or SystemClock()
        self._tokens = self._burst
        self._updated = self._clock.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock.monotonic())

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    async def acquire(self, cost: float = 1.0) -> None:
        cost = min(cost, self._burst)
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                if now < self._paused_until:
                    await self._clock.sleep(self._paused_until - now)
                    continue
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= cost:
                    self._tokens -= cost
                    return
                await self._clock.sleep((cost - self._tokens) / self._rate)


class RetriesExhausted(Exception):
    """A request kept failing with retryable errors; the caller abandons the work for later redelivery."""


@dataclass
class ResilientSender:
    """Sends one logical request with bounded retries on 429/5xx/timeouts, honouring Retry-After.

    Other 4xx answers are returned at once: they are the caller's to interpret. `limiter` (optional) is
    acquired before every attempt with `cost` tokens and paused by every 429.
    """

    api: str
    policy: RetryPolicy
    limiter: RateLimiter | None = None
    clock: Clock | None = None
    rng: random.Random | None = None
    retries: Tally = field(default_factory=lambda: Tally("tibridge.http.retries", "Retried requests, by API and cause"))
    throttled_answers: Tally = field(
        default_factory=lambda: Tally("tibridge.http.throttled", "429 answers honoured, by API")
    )

    async def send(
        self, attempt_request: Callable[[], Awaitable[httpx.Response]], *, cost: float = 1.0
    ) -> httpx.Response:
        clock = self.clock or SystemClock()
        cause = "none"
        for attempt in range(1, self.policy.max_attempts + 1):
            if self.limiter is not None:
                await self.limiter.acquire(cost)
            try:
                response = await attempt_request()
            except (httpx.TimeoutException, httpx.TransportError) as error:
                cause = type(error).__name__
                delay = self.policy.backoff(attempt, self.rng)
            else:
                if response.status_code not in RETRYABLE_STATUS:
                    return response
                cause = str(response.status_code)
                delay = self.throttled(response.headers.get("Retry-After"), attempt, response.status_code == 429)
                if attempt == self.policy.max_attempts:
                    return response
            if attempt == self.policy.max_attempts:
                break
            self.retries.add(api=self.api, cause=cause)
            log.info("%s request failed (%s); retry %d in %.2fs", self.api, cause, attempt, delay)
            await clock.sleep(delay)
        raise RetriesExhausted(f"{self.api} kept failing ({cause}) after {self.policy.max_attempts} attempts")

    def throttled(self, retry_after: str | None, attempt: int, is_429: bool) -> float:
        """The wait before the next attempt; a 429 also pauses every caller sharing the limiter."""
        announced = parse_retry_after(retry_after)
        delay = announced if announced is not None else self.policy.backoff(attempt, self.rng)
        if is_429:
            self.throttled_answers.add(api=self.api)
            # Paused even when we give up below: the work comes back, and must not arrive inside the window.
            if self.limiter is not None:
                self.limiter.pause(delay)
        if announced is not None and announced > self.policy.max_retry_after_seconds:
            raise RetriesExhausted(f"{self.api} asked us to wait {announced:.0f}s; giving the work back to the bus")
        return delay


def async_client(base_url: str, *, timeout_seconds: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An httpx client with TLS verification on and an explicit timeout on every phase."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        headers=headers,
        verify=True,
        follow_redirects=False,
    )
