"""Counts a service keeps: each moves an OpenTelemetry instrument and the process's own total together.

A `Tally` is a counter and a `Distribution` a histogram: what they record goes to the instrument (for
dashboards, by the standard OTEL_* exporters) and into totals per attribute set, from which a service builds
its `Snapshot` — a frozen dataclass the demo, the bench and the log line at exit read by attribute.
Attributes carry categories only (verdicts, reasons, outcomes), never an indicator value.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from opentelemetry import metrics

_METER = "tibridge"
_AttributeSet = tuple[tuple[str, str], ...]


class Tally:
    """A counter: `add(n, verdict="drop", reason="below_threshold")`; `total(verdict="drop")`, `by("reason")`."""

    def __init__(self, name: str, description: str) -> None:
        # The same name gives the same instrument: every service instance of a process shares it.
        self._instrument = metrics.get_meter(_METER).create_counter(name, description=description)
        self._totals: Counter[_AttributeSet] = Counter()

    def add(self, amount: int = 1, **attributes: str) -> None:
        if amount:
            self._instrument.add(amount, attributes)
            key = tuple(attributes.items())
            if len(key) > 1:  # one attribute set, whatever order the caller named them in
                key = tuple(sorted(key))
            self._totals[key] += amount

    def total(self, **attributes: str) -> int:
        """The sum over every attribute set that has these attributes (all of them when none are given)."""
        return sum(count for key, count in self._totals.items() if _matches(key, attributes))

    def by(self, attribute: str, **attributes: str) -> dict[str, int]:
        """Totals by the value of `attribute`, among the sets that have `attributes`; largest first."""
        grouped: Counter[str] = Counter()
        for key, count in self._totals.items():
            value = dict(key).get(attribute)
            if value is not None and _matches(key, attributes):
                grouped[value] += count
        return dict(grouped.most_common())


class Distribution:
    """A histogram: `record(value, **attributes)`; keeps how many, their sum and the largest."""

    def __init__(self, name: str, description: str, unit: str = "") -> None:
        self._instrument = metrics.get_meter(_METER).create_histogram(name, unit=unit, description=description)
        self.count = 0
        self.sum = 0.0
        self.largest = 0.0

    def record(self, value: float, **attributes: str) -> None:
        self._instrument.record(value, attributes)
        self.count += 1
        self.sum += value
        self.largest = max(self.largest, value)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Base of a service's counts; subclasses are frozen dataclasses of numbers, mappings and nested snapshots."""

    def as_json(self) -> dict[str, Any]:
        converted: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return converted


def _matches(key: _AttributeSet, attributes: Mapping[str, str]) -> bool:
    present = dict(key)
    return all(present.get(name) == value for name, value in attributes.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(_jsonable(key)): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value
