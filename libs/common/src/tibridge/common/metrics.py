"""Counts a service keeps, which are also what its OpenTelemetry instruments report.

A `Tally` is a counter: it keeps totals per attribute set, from which a service builds its `Snapshot` — a
frozen dataclass the demo, the bench and the log line at exit read by attribute — and an observable counter
reads those same totals when metrics are collected (the standard OTEL_* exporters, /metrics), summed over every
Tally of the name in the process. Counting costs a dictionary update; the SDK's work is done per collection, not
per count (about 10 µs per count otherwise, several times per indicator). A `Distribution` is a histogram whose
records go to the instrument as they come (per batch or window, not per message). A `Gauge` is a value read only
when metrics are collected (a backlog, the watermark's age). Attributes carry categories only (verdicts,
reasons, outcomes), never an indicator value.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import Enum
from types import MethodType
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

_METER = "tibridge"
_AttributeSet = tuple[tuple[str, str], ...]


class Tally:
    """A counter: `add(n, verdict="drop", reason="below_threshold")`; `total(verdict="drop")`, `by("reason")`."""

    def __init__(self, name: str, description: str) -> None:
        self._totals: Counter[_AttributeSet] = Counter()
        # The same name gives the same instrument: every service instance of a process reports through it.
        _ObservedCounter.named(name, description).track(self)

    def add(self, amount: int = 1, **attributes: str) -> None:
        if amount:
            self._totals[tuple(sorted(attributes.items()))] += amount

    def totals(self) -> dict[_AttributeSet, int]:
        """A copy of the totals per attribute set (a C-level copy: safe from an exporter's thread)."""
        return dict(self._totals)

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


class _ObservedCounter:
    """One observable counter per name: at each collection, the totals of every live Tally of that name."""

    _named: dict[str, _ObservedCounter] = {}
    _made = threading.Lock()

    def __init__(self, name: str, description: str) -> None:
        self._lock = threading.Lock()
        self._tallies: weakref.WeakSet[Tally] = weakref.WeakSet()
        metrics.get_meter(_METER).create_observable_counter(name, callbacks=[self._observe], description=description)

    @classmethod
    def named(cls, name: str, description: str) -> _ObservedCounter:
        with cls._made:
            if name not in cls._named:
                cls._named[name] = cls(name, description)
            return cls._named[name]

    def track(self, tally: Tally) -> None:
        with self._lock:
            self._tallies.add(tally)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            tallies = list(self._tallies)
        summed: Counter[_AttributeSet] = Counter()
        for tally in tallies:
            summed.update(tally.totals())
        return [Observation(count, dict(key)) for key, count in summed.items()]


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


# A gauge's reading: the value now, or None when there is none to report (nothing to measure yet).
Reading = Callable[[], float | None]


class Gauge:
    """A value read at each collection: `watch(read, subscription="scorer")` adds a series whose value is what
    `read()` returns then (None leaves the series out). The instrument is made once per name per process
    (`Gauge.named`), and every watcher of the name reports through it. A bound method is held weakly, so an
    object that is gone stops reporting."""

    _named: dict[str, Gauge] = {}
    _made = threading.Lock()

    def __init__(self, name: str, description: str, unit: str) -> None:
        self._lock = threading.Lock()
        self._watchers: list[tuple[Callable[[], Reading | None], dict[str, str]]] = []
        metrics.get_meter(_METER).create_observable_gauge(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    @classmethod
    def named(cls, name: str, description: str, unit: str = "") -> Gauge:
        with cls._made:
            if name not in cls._named:
                cls._named[name] = cls(name, description, unit)
            return cls._named[name]

    def watch(self, read: Reading, **attributes: str) -> None:
        # A plain function is held as it is.
        reference: Callable[[], Reading | None] = (
            weakref.WeakMethod(read) if isinstance(read, MethodType) else _held_strongly(read)
        )
        with self._lock:
            self._watchers.append((reference, attributes))

    def read(self, **attributes: str) -> list[float]:
        """The values the watchers with these attributes report now (what a collection would see)."""
        return [float(value) for value, key in self._readings() if _matches(key, attributes)]

    def _readings(self) -> list[tuple[float, _AttributeSet]]:
        with self._lock:
            live = [(reference(), attributes) for reference, attributes in self._watchers]
            self._watchers = [watcher for watcher, (read, _) in zip(self._watchers, live, strict=True) if read]
        readings = []
        for read, attributes in live:
            value = read() if read is not None else None
            if value is not None:
                readings.append((value, tuple(sorted(attributes.items()))))
        return readings

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(key)) for value, key in self._readings()]


def _held_strongly(read: Reading) -> Callable[[], Reading]:
    return lambda: read


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
