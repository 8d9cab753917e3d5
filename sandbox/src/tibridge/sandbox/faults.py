"""Seeded, deterministic fault injection per API, a token-bucket rate ceiling, and Retry-After bookkeeping.

Plain code over an injected monotonic clock: the server asks for a decision when a request arrives and
carries it out (sleeps, answers an error, hangs, drops the connection).
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Api = Literal["loganalytics", "graph", "threatstream"]
APIS: tuple[Api, ...] = get_args(Api)


class FaultSpec(BaseModel):
    """What goes wrong for one API. Probabilities are per request (per item inside a Graph batch)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(0.0, ge=0, description="Added to every request.")
    jitter_ms: float = Field(0.0, ge=0, description="Uniform extra latency in [0, jitter_ms).")
    rate_ceiling: float | None = Field(None, gt=0, description="Requests per second; beyond it 429.")
    burst: int | None = Field(None, ge=1, description="Token bucket size (default: one second of the ceiling).")
    p429: float = Field(0.0, ge=0, le=1)
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After announced with an injected 429.")
    p500: float = Field(0.0, ge=0, le=1)
    p503: float = Field(0.0, ge=0, le=1)
    p_hang: float = Field(0.0, ge=0, le=1, description="Sleep hang_seconds, then answer 504.")
    hang_seconds: float = Field(120.0, gt=0)
    p_malformed: float = Field(0.0, ge=0, le=1, description="200 with a truncated JSON body.")
    p_drop: float = Field(0.0, ge=0, le=1, description="Close the connection without answering.")
    reject_values: str | None = Field(
        None, description="ThreatStream only: a regex; a write carrying a matching value is answered 400."
    )

    @field_validator("reject_values")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"reject_values is not a valid regex: {error}") from None
        return pattern

    @model_validator(mode="after")
    def _probabilities_fit(self) -> Self:
        if self.p429 + self.p500 + self.p503 + self.p_hang + self.p_malformed + self.p_drop > 1:
            raise ValueError("the fault probabilities of one API add up to more than 1")
        return self


class FaultSpecError(ValueError):
    pass


def merge_faults(current: Mapping[Api, FaultSpec], patch: Mapping[str, Any]) -> dict[Api, FaultSpec]:
    """A partial update: `{"graph": {"p429": 0.1}}` changes only that field of that API."""
    merged = dict(current)
    for api, fields in patch.items():
        if api not in APIS:
            raise FaultSpecError(f"unknown API {api!r}; use one of {', '.join(APIS)}")
        if isinstance(fields, FaultSpec):
            merged[api] = fields
            continue
        if not isinstance(fields, Mapping):
            raise FaultSpecError(f"faults for {api} must be an object of field → value")
        try:
            merged[api] = FaultSpec.model_validate({**merged.get(api, FaultSpec()).model_dump(), **fields})
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise FaultSpecError(f"invalid faults for {api}: {problems}") from None
    return merged


def parse_fault_flags(flags: list[str]) -> dict[str, dict[str, str]]:
    """`["graph.p429=0.1", "threatstream.latency_ms=50"]` → a patch for `merge_faults`."""
    patch: dict[str, dict[str, str]] = {}
    for flag in flags:
        target, separator, value = flag.partition("=")
        api, dot, field = target.partition(".")
        if not separator or not dot or not field:
            raise FaultSpecError(f"--fault {flag!r} must look like API.FIELD=VALUE, e.g. graph.p429=0.1")
        patch.setdefault(api, {})[field] = value
    return patch


class FaultKind(StrEnum):
    NONE = "none"
    RATE_LIMITED = "rate_limited"  # over the ceiling
    THROTTLED = "throttled"  # injected 429
    ERROR_500 = "error_500"
    ERROR_503 = "error_503"
    HANG = "hang"
    MALFORMED = "malformed"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class FaultDecision:
    kind: FaultKind
    delay_seconds: float = 0.0
    retry_after: int | None = None


class TokenBucket:
    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """Takes a token and returns 0, or returns how long until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class FaultInjector:
    def __init__(
        self,
        seed: int,
        faults: Mapping[Api, FaultSpec],
        monotonic: Callable[[], float],
        on_fault: Callable[[Api, FaultKind], None] | None = None,
    ) -> None:
        self._monotonic = monotonic
        self._on_fault = on_fault
        self._random = {api: random.Random(f"{seed}:{api}") for api in APIS}
        self._buckets: dict[Api, TokenBucket | None] = {}
        self.faults: dict[Api, FaultSpec] = {}
        self.replace(faults)

    def replace(self, faults: Mapping[Api, FaultSpec]) -> None:
        now = self._monotonic()
        self.faults = {api: faults.get(api, FaultSpec()) for api in APIS}
        self._buckets = {
            api: TokenBucket(spec.rate_ceiling, spec.burst or max(1.0, spec.rate_ceiling), now)
            if spec.rate_ceiling
            else None
            for api, spec in self.faults.items()
        }

    def decide(self, api: Api, *, ceiling: bool = True) -> FaultDecision:
        """For a whole HTTP request: latency, then the rate ceiling (unless the request's parts count
        against it one by one), then one seeded draw among the faults."""
        spec = self.faults[api]
        rng = self._random[api]
        delay = (spec.latency_ms + rng.random() * spec.jitter_ms) / 1000
        decision = self._draw(api, spec, rng, item=False, ceiling=ceiling)
        return FaultDecision(decision.kind, delay, decision.retry_after)

    def decide_item(self, api: Api) -> FaultDecision:
        """For one request inside a batch: the ceiling and the status faults (429, 500, 503) only."""
        return self._draw(api, self.faults[api], self._random[api], item=True, ceiling=True)

    def _draw(self, api: Api, spec: FaultSpec, rng: random.Random, *, item: bool, ceiling: bool) -> FaultDecision:
        decision = self._drawn(api, spec, rng, item=item, ceiling=ceiling)
        if decision.kind is not FaultKind.NONE and self._on_fault is not None:
            self._on_fault(api, decision.kind)
        return decision

    def _drawn(self, api: Api, spec: FaultSpec, rng: random.Random, *, item: bool, ceiling: bool) -> FaultDecision:
        bucket = self._buckets[api]
        if bucket is not None and ceiling:
            wait = bucket.take(self._monotonic())
            if wait > 0:
                return FaultDecision(FaultKind.RATE_LIMITED, retry_after=max(1, math.ceil(wait)))
        draw = rng.random()
        chances: list[tuple[float, FaultKind]] = [
            (spec.p429, FaultKind.THROTTLED),
            (spec.p500, FaultKind.ERROR_500),
            (spec.p503, FaultKind.ERROR_503),
        ]
        if not item:
            chances += [
                (spec.p_hang, FaultKind.HANG),
                (spec.p_malformed, FaultKind.MALFORMED),
                (spec.p_drop, FaultKind.DROP),
            ]
        for chance, kind in chances:
            if draw < chance:
                retry_after = spec.retry_after_seconds if kind is FaultKind.THROTTLED else None
                return FaultDecision(kind, retry_after=retry_after)
            draw -= chance
        return FaultDecision(FaultKind.NONE)


class RetryAfterLedger:
    """Remembers every Retry-After window announced, to count requests that arrive inside one.

    A request counts when it arrives more than `grace` seconds after the announcement (the answer needs
    time to reach the caller) and before the window ends.
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._windows: dict[Api, list[tuple[float, float]]] = {api: [] for api in APIS}

    def announce(self, api: Api, now: float, seconds: float) -> None:
        if seconds > 0:
            self._windows[api].append((now, now + seconds))

    def inside(self, api: Api, now: float) -> bool:
        windows = [window for window in self._windows[api] if window[1] > now]
        self._windows[api] = windows
        return any(announced + self.grace < now < end for announced, end in windows)

    def clear(self) -> None:
        for windows in self._windows.values():
            windows.clear()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request turned away by a documented limit: 429 with this message and Retry-After."""

    message: str
    retry_after: int


class RequestLimits:
    """Log Analytics' documented limits per identity: `max_concurrent` queries at once, `per_window` requests
    per `window_seconds`. Only requests let through count against the window."""

    def __init__(
        self,
        max_concurrent: int | None,
        per_window: int | None,
        window_seconds: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.max_concurrent = max_concurrent
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._monotonic = monotonic
        self._arrivals: deque[float] = deque()
        self.in_flight = 0
        self.peak = 0

    def admit(self) -> Refusal | None:
        """Takes a place, or says why not; every place taken must be given back with `release`."""
        now = self._monotonic()
        while self._arrivals and self._arrivals[0] <= now - self.window_seconds:
            self._arrivals.popleft()
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            return Refusal(f"Too many concurrent queries: at most {self.max_concurrent} run at once per identity.", 1)
        if self.per_window is not None and len(self._arrivals) >= self.per_window:
            wait = self._arrivals[0] + self.window_seconds - now
            return Refusal(
                f"Rate limit exceeded: at most {self.per_window} requests per {self.window_seconds:g} s per identity.",
                max(1, math.ceil(wait)),
            )
        self._arrivals.append(now)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return None

    def release(self) -> None:
        self.in_flight -= 1
