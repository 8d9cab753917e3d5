"""One rate-and-retry engine for every API client: it finds an unpublished ceiling by itself and spends one
budget of attempts per logical operation.

* `Pacer` — one per API per process. A token bucket whose rate adapts, a limit on requests in flight that
  adapts, and a pause every caller honours. Each request takes a `Permit` (its cost: the items it carries) and
  gives it back with what the answer said (`Signal`) and how much of it was answered. Clean answers to
  requests the rate held back raise the rate: doubling about every quarter second until the first 429, then
  back within about a second to the ceiling estimated from what the API delivered over the last 10 s, and
  slowly past it. A 429 cuts the rate once per round of requests (to 90 % of that estimate); any Retry-After
  pauses every caller. Clean answers to requests that waited for a free place raise the limit on requests in
  flight (so several are in flight when latency, not the ceiling, binds); timeouts and 503s cut it.
  `PaceLimits.max_rate` and `.max_parallel` are hard caps; `PaceLimits.fixed` pins both (a fixed ceiling);
  `PaceLimits.window` is a documented quota of requests per period (`RequestWindow`), also a hard cap.
* `RetryPolicy` and `Attempts` — attempts per logical operation and the backoff between them. A request that
  carries several operations (a Graph `$batch`) spends one attempt of each (`Engine.after`); nothing retries
  underneath.
* `Engine.call` — the retry loop for an operation that is one request at a time: bounded, Retry-After honoured,
  every attempt paced. `tibridge.common.http` has the judge for HTTP answers (`judge_response`,
  `retry_of_status`).

Every API client of tibridge uses it: the scorer's Graph lookups (adaptive, `$batch` items spending their own
attempts), the publisher's ThreatStream requests (adaptive, its rate setting an optional hard cap) and the
collector's Log Analytics queries (fixed at the documented limits: `PaceLimits.fixed` with a `RequestWindow`).

Adopting it: one `Pacer` per API per process, shared by every task that calls the API; an `Engine` on it with
the API's `RetryPolicy` and the exception types its client raises for transport failures (`transient`); each
request becomes `await engine.call(send, judge)`, where `judge` maps an answer to `None` (it stands) or a
`Retry` (`retry_of_status(status, retry_after_header)` for HTTP). `RetriesExhausted` means: give the work back.

The control law (`RateControl`) is plain arithmetic over what callers report; time enters only through the
`Clock` the `Pacer` is given, so tests drive it with a manual clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from tibridge.common.clock import Clock
from tibridge.common.metrics import Snapshot, Tally

log = logging.getLogger(__name__)

R = TypeVar("R")

# Until the first 429 the rate doubles about every quarter second of saturated traffic (ln 2 / 0.25 s).
SLOW_START_GAIN = 2.8
# After a 429 the rate returns to the ceiling it estimated with a time constant of half a second, then probes
# past it: 2 % of it per second at first, twice that every 5 s without a 429 (a ceiling that rose is found
# within tens of seconds).
RECOVERY_GAIN = 2.0
PROBE_GAIN = 0.02
PROBE_DOUBLING_SECONDS = 5.0
# The ceiling is estimated from what the API answered over this long (pauses included: a bucket on the other
# side fills while we wait, and a short window would count that burst as capacity) — except at the first 429,
# when the long window would mostly hold the climb from the initial rate: then over the last second.
DELIVERY_WINDOW_SECONDS = 10.0
FIRST_DELIVERY_WINDOW_SECONDS = 1.0
# After a 429, the rate restarts this far below the estimated ceiling; the estimate is kept within
# ESTIMATE_FLOOR to 1 times the rate that drew the 429 (the API refused that rate, and a thin window is no proof
# that it takes much less).
RATE_CUT = 0.9
ESTIMATE_FLOOR = 0.5
PARALLEL_CUT = 0.75
# Tokens the bucket holds at most, in seconds of the current rate: bursts stay small after a pause.
BURST_SECONDS = 0.1


class Signal(StrEnum):
    """What one answer says about the API's capacity."""

    CLEAN = "clean"  # answered, nothing deferred: room to grow
    THROTTLED = "throttled"  # 429: over the ceiling
    OVERLOADED = "overloaded"  # timeout, dropped connection, 503/504: too much in flight
    NEUTRAL = "neutral"  # says nothing about capacity (a 4xx, a 500 for one item, a crash)


@dataclass(frozen=True)
class RequestWindow:
    """A documented quota of `requests` per `seconds` (e.g. Log Analytics' 200 per 30 s), as a hard cap.

    The API counts a request from its arrival, which lies somewhere between our send and its answer; so here a
    request holds its place from when it is sent until `seconds` after it was answered, and the quota holds
    whatever the network's delay."""

    requests: int
    seconds: float

    def __post_init__(self) -> None:
        if self.requests < 1 or not self.seconds > 0:
            raise ValueError("a request window needs at least one request and a positive length")


@dataclass(frozen=True)
class PaceLimits:
    """Where a pacer starts and its hard caps. Rates are in cost units (lookups, requests) per second; `window`
    is a quota counted in requests, whatever their cost."""

    initial_rate: float
    max_rate: float | None = None
    min_rate: float = 0.5
    initial_parallel: int = 1
    max_parallel: int = 256
    adaptive: bool = True
    window: RequestWindow | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= self.initial_rate:
            raise ValueError("rates must be positive and the initial rate at least the minimum")
        if self.max_rate is not None and self.max_rate < self.min_rate:
            raise ValueError("max_rate must be at least min_rate")
        if not 1 <= self.initial_parallel <= self.max_parallel:
            raise ValueError("initial_parallel must be 1 to max_parallel")

    @classmethod
    def fixed(cls, rate: float, parallel: int = 256, *, window: RequestWindow | None = None) -> PaceLimits:
        """A ceiling that never moves: `rate` per second (`math.inf`: none), `parallel` in flight, and `window`."""
        return cls(
            initial_rate=rate,
            max_rate=rate,
            min_rate=rate,
            initial_parallel=parallel,
            max_parallel=parallel,
            adaptive=False,
            window=window,
        )


class RateControl:
    """The control law: rate and in-flight limit from what callers report, at the times they give. No I/O.

    A 429 or an overload cuts once per round: a permit taken before the last cut (`epoch`) reports an answer
    to traffic sent at the old rate, which the cut already answered.
    """

    def __init__(self, limits: PaceLimits, now: float) -> None:
        self.limits = limits
        self.rate = self._clamp_rate(limits.initial_rate)
        self.parallel = float(limits.initial_parallel)
        self.rate_epoch = 0
        self.parallel_epoch = 0
        self.ceiling: float | None = None  # the estimate made at the last 429
        self._cut_at = now
        self._started = now
        self._delivered: deque[tuple[float, float]] = deque()
        self._delivered_sum = 0.0
        self._parallel_slow_start = True

    @property
    def parallel_limit(self) -> int:
        return max(1, min(self.limits.max_parallel, math.floor(self.parallel)))

    def delivered(self, now: float, amount: float) -> None:
        """`amount` of work answered (not deferred) at `now`: what the ceiling is estimated from."""
        if amount > 0:
            self._delivered.append((now, amount))
            self._delivered_sum += amount

    def clean(self, now: float, cost: float, *, rate_bound: bool, slot_bound: bool) -> None:
        """A clean answer to a request of `cost`; `rate_bound`/`slot_bound`: whether it waited for tokens / a slot.

        Only a limit that held a request back grows: a pacer that traffic never fills keeps the rate it has.
        """
        if not self.limits.adaptive:
            return
        if rate_bound:
            if self.ceiling is None:
                growth = SLOW_START_GAIN * self.rate
            else:
                probe = PROBE_GAIN * self.ceiling * 2 ** ((now - self._cut_at) / PROBE_DOUBLING_SECONDS)
                growth = RECOVERY_GAIN * max(0.0, self.ceiling - self.rate) + probe
            # `growth` is per second of traffic at this rate; this answer is `cost / rate` seconds of it.
            self.rate = self._clamp_rate(self.rate + growth * cost / self.rate)
        if slot_bound:
            step = 1.0 if self._parallel_slow_start else 1.0 / self.parallel
            self.parallel = min(float(self.limits.max_parallel), self.parallel + step)

    def throttled(self, now: float, epoch: int, rate_at_issue: float) -> bool:
        """A 429 to a permit of `epoch` taken at `rate_at_issue`; True when it cut the rate."""
        if not self.limits.adaptive or epoch != self.rate_epoch:
            return False
        self.rate_epoch += 1
        refused = min(self.rate, rate_at_issue)
        estimate = self._delivered_rate(
            now, FIRST_DELIVERY_WINDOW_SECONDS if self.ceiling is None else DELIVERY_WINDOW_SECONDS
        )
        self.ceiling = min(refused, max(ESTIMATE_FLOOR * refused, estimate))
        self.rate = self._clamp_rate(self.ceiling * RATE_CUT)
        self._cut_at = now
        return True

    def overloaded(self, epoch: int) -> bool:
        """A timeout or 503 to a permit of `epoch`; True when it cut the in-flight limit."""
        if not self.limits.adaptive or epoch != self.parallel_epoch:
            return False
        self.parallel_epoch += 1
        self._parallel_slow_start = False
        self.parallel = max(1.0, self.parallel * PARALLEL_CUT)
        return True

    def _delivered_rate(self, now: float, window: float) -> float:
        while self._delivered and self._delivered[0][0] < now - DELIVERY_WINDOW_SECONDS:
            self._delivered_sum -= self._delivered.popleft()[1]
        span = min(window, now - self._started)
        if span <= 0:
            return 0.0
        if window >= DELIVERY_WINDOW_SECONDS:
            return self._delivered_sum / span
        return sum(amount for moment, amount in self._delivered if moment >= now - span) / span

    def _clamp_rate(self, rate: float) -> float:
        ceiling = self.limits.max_rate if self.limits.max_rate is not None else math.inf
        return min(ceiling, max(self.limits.min_rate, rate))


@dataclass(frozen=True)
class PaceState(Snapshot):
    """Where a pacer stands: its rate and in-flight limit now, the highest rate it reached, its pauses."""

    rate: float
    peak_rate: float
    parallel_limit: int
    peak_in_flight: int
    in_flight: int
    paused_for: float
    rate_cuts: int
    parallel_cuts: int


class Permit:
    """One request's place: taken from `Pacer.acquire`, given back once with `release(signal, ...)`."""

    def __init__(self, pacer: Pacer, cost: float, *, rate_bound: bool, slot_bound: bool) -> None:
        self._pacer = pacer
        self.cost = cost
        self.rate_bound = rate_bound
        self.slot_bound = slot_bound
        self.rate_at_issue = pacer.control.rate
        self.rate_epoch = pacer.control.rate_epoch
        self.parallel_epoch = pacer.control.parallel_epoch
        self.released = False

    def shrink(self, cost: float) -> None:
        """The request turned out to carry less (a batch that did not fill): the tokens not needed go back."""
        if cost < self.cost:
            self._pacer._refund(self.cost - cost)
            self.cost = cost

    def release(self, signal: Signal, *, delivered: float | None = None, pause_seconds: float | None = None) -> None:
        """Gives the place back with what the answer said. `delivered`: the part of the cost answered (all of it
        for a clean answer, none otherwise, unless given); `pause_seconds` (a Retry-After) pauses every caller."""
        if self.released:
            return
        self.released = True
        if delivered is None:
            delivered = self.cost if signal is Signal.CLEAN else 0.0
        self._pacer._released(self, signal, delivered, pause_seconds)


class Pacer:
    """Paces one API's requests for the whole process (see the module's description)."""

    def __init__(self, api: str, limits: PaceLimits, clock: Clock) -> None:
        self.api = api
        self.control = RateControl(limits, clock.monotonic())
        self._clock = clock
        self._tokens = math.inf  # the first request goes at once
        self._updated = clock.monotonic()
        self._paused_until = 0.0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._peak_rate = self.control.rate
        self._rate_cuts = 0
        self._parallel_cuts = 0
        self._turn = asyncio.Lock()  # first come, first served
        self._slot_freed = asyncio.Event()
        # When the requests answered within the last `limits.window.seconds` were answered (a window only).
        self._answered_at: deque[float] = deque()

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock.monotonic())

    def pause(self, seconds: float) -> None:
        """No permit is handed out for `seconds` from now (a Retry-After window), whoever asks."""
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    def state(self) -> PaceState:
        return PaceState(
            rate=self.control.rate,
            peak_rate=self._peak_rate,
            parallel_limit=self.control.parallel_limit,
            peak_in_flight=self._peak_in_flight,
            in_flight=self._in_flight,
            paused_for=self.paused_for,
            rate_cuts=self._rate_cuts,
            parallel_cuts=self._parallel_cuts,
        )

    async def acquire(self, cost: float = 1.0) -> Permit:
        """Waits until no pause holds, a place in flight is free, the window (if any) has room and the bucket has
        `cost` tokens."""
        rate_bound = slot_bound = False
        async with self._turn:
            while True:
                if (paused := self.paused_for) > 0:
                    await self._clock.sleep(paused)
                    continue
                if self._in_flight >= self.control.parallel_limit:
                    slot_bound = True
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                # A hard cap, not the API: waiting for it says nothing about the API's capacity.
                if (window_wait := self._window_wait()) > 0:
                    if math.isinf(window_wait):  # every place is held by a request in flight
                        self._slot_freed.clear()
                        await self._slot_freed.wait()
                    else:
                        await self._clock.sleep(window_wait)
                    continue
                wait = self._take(cost)
                if wait > 0:
                    rate_bound = True
                    await self._clock.sleep(wait)
                    continue
                break
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            return Permit(self, cost, rate_bound=rate_bound, slot_bound=slot_bound)

    def _window_wait(self) -> float:
        """0 when the window has room (or there is none); else how long until it has, `math.inf` while every
        place is held by a request still in flight."""
        window = self.control.limits.window
        if window is None:
            return 0.0
        now = self._clock.monotonic()
        while self._answered_at and self._answered_at[0] <= now - window.seconds:
            self._answered_at.popleft()
        if self._in_flight + len(self._answered_at) < window.requests:
            return 0.0
        if not self._answered_at:
            return math.inf
        # Float rounding can put the oldest place's end a hair before now while it still counts: wait a moment.
        return max(1e-6, self._answered_at[0] + window.seconds - now)

    def _take(self, cost: float) -> float:
        """Takes `cost` tokens and returns 0, or returns how long until they are there."""
        now = self._clock.monotonic()
        rate = self.control.rate
        if math.isinf(rate):
            return 0.0
        # A request may cost more than the usual burst (a full batch at a low rate): it waits for its tokens.
        capacity = max(cost, rate * BURST_SECONDS)
        self._tokens = min(capacity, self._tokens + (now - self._updated) * rate)
        self._updated = now
        # Within a microsecond's worth: float rounding must not make a waiter spin without time passing.
        if self._tokens >= cost - rate * 1e-6:
            self._tokens = max(0.0, self._tokens - cost)
            return 0.0
        return (cost - self._tokens) / rate

    async def unpaused(self) -> None:
        """Returns once no pause holds (for a caller that already holds a permit and waited since)."""
        while (paused := self.paused_for) > 0:
            await self._clock.sleep(paused)

    def _refund(self, tokens: float) -> None:
        self._tokens += tokens

    def _released(self, permit: Permit, signal: Signal, delivered: float, pause_seconds: float | None) -> None:
        self._in_flight -= 1
        self._slot_freed.set()
        if pause_seconds is not None and pause_seconds > 0:
            self.pause(pause_seconds)
        control = self.control
        now = self._clock.monotonic()
        if control.limits.window is not None:
            self._answered_at.append(now)
        before = control.rate
        control.delivered(now, delivered)
        match signal:
            case Signal.CLEAN:
                control.clean(now, permit.cost, rate_bound=permit.rate_bound, slot_bound=permit.slot_bound)
                self._peak_rate = max(self._peak_rate, control.rate)
            case Signal.THROTTLED:
                if control.throttled(now, permit.rate_epoch, permit.rate_at_issue):
                    self._rate_cuts += 1
                    log.info(
                        "%s throttled us: rate %.1f → %.1f per second, pausing %.1fs",
                        self.api,
                        before,
                        control.rate,
                        pause_seconds or 0.0,
                    )
            case Signal.OVERLOADED:
                if control.overloaded(permit.parallel_epoch):
                    self._parallel_cuts += 1
                    log.info("%s is overloaded: at most %d requests in flight", self.api, control.parallel_limit)
            case Signal.NEUTRAL:
                pass
        if control.rate < before:
            # Tokens gathered at the old rate would let a burst through at the new one.
            self._tokens = min(self._tokens, control.rate * BURST_SECONDS)


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


@dataclass
class Attempts:
    """The budget of one logical operation: every request that carries it spends one attempt."""

    limit: int
    used: int = 0

    def spend(self) -> int:
        """Counts an attempt; returns its number (1, 2, …)."""
        self.used += 1
        return self.used

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit


@dataclass(frozen=True)
class Retry:
    """An answer that defers the operation: try again after `retry_after` seconds if the API said so, else after a
    backoff. `cause` is a metric label (a status, an exception type); `detail` is for logs."""

    cause: str
    retry_after: float | None = None
    signal: Signal = Signal.NEUTRAL
    detail: str = ""


class RetriesExhausted(Exception):
    """An operation kept being deferred; the caller abandons the work for later redelivery.

    `last` is the last answer when there was one (a retryable response the caller may still want to read);
    `budget_spent` says whether every attempt was used (rather than the API asking for too long a wait);
    `cause` is the last deferral's (a status, an exception type) and `attempts` how many were sent.
    """

    def __init__(
        self,
        message: str,
        last: object | None = None,
        *,
        budget_spent: bool = True,
        cause: str = "",
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.last = last
        self.budget_spent = budget_spent
        self.cause = cause
        self.attempts = attempts


@dataclass(frozen=True)
class Delay:
    """What follows a deferred attempt: another after `seconds`, or none (`seconds` is None) because of `reason`."""

    seconds: float | None
    reason: str = ""
    budget_spent: bool = False


@dataclass
class EngineMetrics:
    requests: Tally = field(default_factory=lambda: Tally("tibridge.http.requests", "API requests sent, by API"))
    retries: Tally = field(
        default_factory=lambda: Tally("tibridge.http.retries", "Operations retried, by API and cause")
    )
    throttled: Tally = field(default_factory=lambda: Tally("tibridge.http.throttled", "429 answers honoured, by API"))


@dataclass(frozen=True)
class EngineCounts(Snapshot):
    requests: int
    retries: int
    throttled: int
    pace: PaceState


class Engine:
    """A pacer and a retry policy for one API: `call` runs one operation; `after` says what a deferral costs,
    for callers that retry parts of a request themselves (the Graph batcher)."""

    def __init__(
        self,
        api: str,
        pacer: Pacer,
        policy: RetryPolicy,
        clock: Clock,
        *,
        transient: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError),
        rng: random.Random | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.api = api
        self.pacer = pacer
        self.policy = policy
        self._clock = clock
        self._transient = transient
        self._rng = rng
        self.metrics = metrics or EngineMetrics()

    def counts(self) -> EngineCounts:
        return EngineCounts(
            requests=self.metrics.requests.total(api=self.api),
            retries=self.metrics.retries.total(api=self.api),
            throttled=self.metrics.throttled.total(api=self.api),
            pace=self.pacer.state(),
        )

    async def call(
        self,
        attempt: Callable[[], Awaitable[R]],
        judge: Callable[[R], Retry | None],
        *,
        cost: float = 1.0,
        attempts: Attempts | None = None,
    ) -> R:
        """`attempt()` paced and retried until `judge` accepts its answer (returns None) or the budget is spent.

        An exception in `transient` counts as an overload and is retried; any other propagates. Raises
        `RetriesExhausted` (with the last answer, if any) when the operation gives up.
        """
        budget = attempts or Attempts(self.policy.max_attempts)
        while True:
            permit = await self.pacer.acquire(cost)
            self.metrics.requests.add(api=self.api)
            last: R | None = None
            try:
                last = await attempt()
            except self._transient as error:
                retry = Retry(type(error).__name__, signal=Signal.OVERLOADED, detail=str(error))
            except BaseException:
                permit.release(Signal.NEUTRAL)
                raise
            else:
                verdict = judge(last)
                if verdict is None:
                    permit.release(Signal.CLEAN)
                    return last
                retry = verdict
            if retry.signal is Signal.THROTTLED:
                self.metrics.throttled.add(api=self.api)
            delay = self.after(retry, budget, permit)
            if delay.seconds is None:
                raise RetriesExhausted(
                    delay.reason, last, budget_spent=delay.budget_spent, cause=retry.cause, attempts=budget.used
                )
            log.info(
                "%s request deferred (%s%s); attempt %d in %.2fs",
                self.api,
                retry.cause,
                f": {retry.detail}" if retry.detail else "",
                budget.used + 1,
                delay.seconds,
            )
            await self._clock.sleep(delay.seconds)

    def after(self, retry: Retry, budget: Attempts, permit: Permit | None = None) -> Delay:
        """Spends an attempt of `budget` on a deferral and says what follows; releases `permit` (when given)
        with the deferral's signal.

        A 429 or any Retry-After pauses every caller for that long — also when the operation gives up: its work
        comes back, and must not arrive inside the window. The next attempt waits the Retry-After, or a
        backoff with jitter; none follows when the budget is spent or the API asks for longer than the policy
        allows.
        """
        attempt = budget.spend()
        wait = retry.retry_after if retry.retry_after is not None else self.policy.backoff(attempt, self._rng)
        pause = wait if retry.signal is Signal.THROTTLED or retry.retry_after is not None else None
        if permit is not None:
            permit.release(retry.signal, pause_seconds=pause)
        elif pause is not None:
            self.pacer.pause(pause)
        if retry.retry_after is not None and retry.retry_after > self.policy.max_retry_after_seconds:
            return Delay(None, f"{self.api} asked us to wait {retry.retry_after:.0f}s; giving the work back")
        if budget.exhausted:
            return Delay(None, f"{self.api} kept deferring ({retry.cause}) after {budget.used} attempts", True)
        self.metrics.retries.add(api=self.api, cause=retry.cause)
        return Delay(wait)
