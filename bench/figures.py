"""The benchmark's arithmetic, as plain functions: delivered ÷ expected, request floors, rates and ratios.

Nothing here does I/O or looks at a clock, so tests/unit/bench checks it directly.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

GRAPH_BATCH_LIMIT = 20  # items per Graph $batch


def canonical(value: str) -> str:
    """How ThreatStream's contents are compared with the expected canonical values: case-insensitive, and an
    IP address in its compressed form (so a Logic App that imported `2001:0DB8::1` still gets credit for
    `2001:db8::1`). Defanged text is not refanged: ThreatStream's extraction does not see an observable in it."""
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower()


@dataclass(frozen=True)
class Delivery:
    expected: int  # values a correct pipeline leaves active
    delivered: int  # of those, how many are active
    extra: int  # active values that are not expected active at all
    wrongly_active: int  # active values a correct pipeline must leave inactive (revoked, dropped, …)

    @property
    def ratio(self) -> float:
        """delivered ÷ expected; 1.0 when nothing was expected."""
        return self.delivered / self.expected if self.expected else 1.0


def delivery(expected_active: Collection[str], expected_not_active: Collection[str], active: Iterable[str]) -> Delivery:
    held = {canonical(value) for value in active}
    wanted = {canonical(value) for value in expected_active}
    unwanted = {canonical(value) for value in expected_not_active}
    return Delivery(
        expected=len(wanted),
        delivered=len(wanted & held),
        extra=len(held - wanted),
        wrongly_active=len(held & unwanted),
    )


def graph_floor(unique_scorable: int) -> int:
    """The fewest Graph requests that can score this many distinct IPs and domains: ⌈n / 20⌉."""
    return math.ceil(unique_scorable / GRAPH_BATCH_LIMIT)


def threatstream_bound(published: int, batch_size: int, profiles: int) -> int:
    """The target's ceiling on ThreatStream requests: ⌈published / batch size⌉ + profiles."""
    return math.ceil(published / batch_size) + profiles


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, or None when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def per_thousand(amount: float, indicators: int) -> float | None:
    return amount * 1000 / indicators if indicators else None


def sustained_rate(samples: Sequence[tuple[float, float]], low: float = 0.05, high: float = 0.95) -> float | None:
    """The rate of a cumulative counter over its busy middle: from the first sample at or past `low` of the
    final value to the first at or past `high` of it, so neither a slow start nor a trickling end counts.

    `samples` are (seconds, cumulative count) in time order. None when the counter never moved or the busy
    span is shorter than two samples.
    """
    if not samples:
        return None
    final = samples[-1][1]
    if final <= 0:
        return None
    start = next(((t, n) for t, n in samples if n >= low * final), None)
    end = next(((t, n) for t, n in samples if n >= high * final), None)
    if start is None or end is None or end[0] <= start[0]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


def first_time_reaching(samples: Sequence[tuple[float, float]], value: float) -> float | None:
    """When a cumulative counter first reached `value` (None if it never did)."""
    return next((t for t, n in samples if n >= value), None)
