"""HTTP for the rate-and-retry engine (`tibridge.common.pacing`): what an HTTP answer means to it
(`judge_response`, `parse_retry_after`), the httpx client every API client uses, and the older shapes
`ResilientSender` and `RateLimiter`, now thin adapters over `Engine.call` and `Pacer`."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from tibridge.common.clock import Clock, SystemClock
from tibridge.common.pacing import Engine, PaceLimits, Pacer, RetriesExhausted, Retry, RetryPolicy, Signal

__all__ = [
    "HTTP_TRANSIENT",
    "RETRYABLE_STATUS",
    "RateLimiter",
    "ResilientSender",
    "RetriesExhausted",
    "RetryPolicy",
    "async_client",
    "judge_response",
    "parse_retry_after",
    "retry_of_status",
]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that say the API has too much in flight (rather than one request failing): they cut concurrency.
_OVERLOAD_STATUS = frozenset({503, 504})
# Failures of the request itself (httpx's timeouts are TransportErrors), retried as overloads.
HTTP_TRANSIENT: tuple[type[BaseException], ...] = (httpx.TransportError, TimeoutError)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def retry_of_status(
    status: int, retry_after: str | None, *, cause: str | None = None, detail: str = ""
) -> Retry | None:
    """The engine's reading of an HTTP status: None when the answer stands, else how to retry it."""
    if status not in RETRYABLE_STATUS:
        return None
    if status == 429:
        signal = Signal.THROTTLED
    elif status in _OVERLOAD_STATUS:
        signal = Signal.OVERLOADED
    else:
        signal = Signal.NEUTRAL
    return Retry(cause or str(status), parse_retry_after(retry_after), signal, detail)


class StatusAnswer(Protocol):
    """What httpx's and azure-core's responses both offer."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def judge_response(response: StatusAnswer) -> Retry | None:
    """`Engine.call`'s judge for a plain HTTP request: 429 and 5xx are retried, any other answer stands."""
    return retry_of_status(response.status_code, response.headers.get("Retry-After"))


class RateLimiter(Pacer):
    """A fixed ceiling: `rate` requests per second that never adapts (`burst` is ignored: bursts are the pacer's).

    Kept for clients that still build one; new code gives `Pacer` adaptive `PaceLimits`.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Clock | None = None) -> None:
        del burst
        if rate <= 0:
            raise ValueError("the rate must be positive")
        super().__init__("api", PaceLimits.fixed(rate), clock or SystemClock())


@dataclass
class ResilientSender:
    """Sends one logical request with bounded retries on 429/5xx/timeouts, honouring Retry-After: `Engine.call`
    under the shape callers already use.

    Other 4xx answers are returned at once: they are the caller's to interpret. A retryable answer on the last
    attempt is returned too; a transport error on it, or a Retry-After beyond the policy, raises
    `RetriesExhausted`. `limiter` (optional) paces every attempt with `cost` and is paused by every 429.
    """

    api: str
    policy: RetryPolicy
    limiter: Pacer | None = None
    clock: Clock | None = None
    rng: random.Random | None = None
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            clock = self.clock or SystemClock()
            pacer = self.limiter or Pacer(self.api, PaceLimits.fixed(math.inf), clock)
            self._engine = Engine(self.api, pacer, self.policy, clock, transient=HTTP_TRANSIENT, rng=self.rng)
        return self._engine

    async def send(
        self, attempt_request: Callable[[], Awaitable[httpx.Response]], *, cost: float = 1.0
    ) -> httpx.Response:
        try:
            return await self.engine.call(attempt_request, judge_response, cost=cost)
        except RetriesExhausted as error:
            if isinstance(error.last, httpx.Response) and error.budget_spent:
                return error.last
            raise


def async_client(base_url: str, *, timeout_seconds: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An httpx client with TLS verification on and an explicit timeout on every phase."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        headers=headers,
        verify=True,
        follow_redirects=False,
    )
