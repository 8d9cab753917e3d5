"""Batches of held messages, and how a batch becomes ThreatStream requests. Pure code: time is passed in.

A batch gathers messages until it holds `max_messages` or its oldest message has waited `max_age` seconds.
Messages go into lanes (a `publish` batch and an `expire` batch never share a request); several messages
about one observable coalesce into one entry whose payload is the newest by indicator time — across lanes,
so a revocation that arrives with an older publication wins — while the entry keeps every message it
stands for, to settle them together.

In approval mode one import session's settings apply to all its observables, so a batch is grouped by
everything an import session states about them: status, TLP, severity, confidence, expiry and one itype per
kind of observable (an expiring session states only itypes and expiry). To keep
the groups few, confidence is rounded down to a multiple of 5 (never overstated), an active expiry is
rounded up to a whole number of days (`TIBRIDGE_PUBLISHER_SESSION_EXPIRY_DAYS`, at most that much later
than upstream's ValidUntil) and an expiring one down to the minute; tags an import
session states are the ones every observable in it shares (always `mdti` and the source name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from tibridge.publisher.mapping import IntelObject, IntelStatus

L = TypeVar("L", bound=Hashable)
P = TypeVar("P")
M = TypeVar("M")
T = TypeVar("T")

CONFIDENCE_STEP = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Entry(Generic[P, M]):
    """One observable in a batch: the newest payload about it and every message it stands for."""

    payload: P
    order: datetime
    messages: list[M]
    first_added: float


@dataclass(frozen=True)
class Batch(Generic[L, P, M]):
    lane: L
    entries: tuple[Entry[P, M], ...]

    @property
    def messages(self) -> list[M]:
        return [message for entry in self.entries for message in entry.messages]


@dataclass
class _Lane(Generic[P, M]):
    entries: dict[Hashable, Entry[P, M]] = field(default_factory=dict)
    messages: int = 0
    started: float = math.inf


class Batcher(Generic[L, P, M]):
    def __init__(self, max_messages: int, max_age_seconds: float) -> None:
        if max_messages < 1 or max_age_seconds <= 0:
            raise ValueError("a batch needs room for a message and a positive age")
        self._max_messages = max_messages
        self._max_age = max_age_seconds
        self._lanes: dict[L, _Lane[P, M]] = {}
        self._lane_of: dict[Hashable, L] = {}
        self._sealed: list[Batch[L, P, M]] = []

    @property
    def held(self) -> int:
        """Messages waiting in open or sealed batches."""
        return sum(lane.messages for lane in self._lanes.values()) + sum(len(b.messages) for b in self._sealed)

    def add(self, lane: L, key: Hashable, order: datetime, payload: P, message: M, now: float) -> bool:
        """Adds a message; True when a batch is full (`ready` hands it out)."""
        current = self._lane_of.get(key)
        if current is None:
            target = self._lanes.setdefault(lane, _Lane())
            target.entries[key] = Entry(payload, order, [message], now)
            target.messages += 1
            target.started = min(target.started, now)
            self._lane_of[key] = lane
        else:
            holder = self._lanes[current]
            entry = holder.entries[key]
            entry.messages.append(message)
            holder.messages += 1
            if order >= entry.order:
                entry.payload, entry.order = payload, order
                if current != lane:
                    self._move(key, current, lane)
        final = self._lane_of[key]
        if self._lanes[final].messages >= self._max_messages:
            self._seal(final)
        return bool(self._sealed)

    def ready(self, now: float) -> list[Batch[L, P, M]]:
        """Full batches, and those whose oldest message has waited long enough; they leave the batcher."""
        for lane, state in list(self._lanes.items()):
            if now - state.started >= self._max_age:
                self._seal(lane)
        return self.drain_sealed()

    def drain(self) -> list[Batch[L, P, M]]:
        """Every batch, due or not (on stop)."""
        for lane in list(self._lanes):
            self._seal(lane)
        return self.drain_sealed()

    def drain_sealed(self) -> list[Batch[L, P, M]]:
        sealed, self._sealed = self._sealed, []
        return sealed

    def next_due(self) -> float | None:
        """When the oldest open batch becomes due (monotonic seconds), if any is open."""
        started = min((lane.started for lane in self._lanes.values()), default=math.inf)
        return None if math.isinf(started) else started + self._max_age

    def _move(self, key: Hashable, source: L, target: L) -> None:
        entry = self._lanes[source].entries.pop(key)
        self._lanes[source].messages -= len(entry.messages)
        if not self._lanes[source].entries:
            del self._lanes[source]
        destination = self._lanes.setdefault(target, _Lane())
        destination.entries[key] = entry
        destination.messages += len(entry.messages)
        destination.started = min(destination.started, entry.first_added)
        self._lane_of[key] = target

    def _seal(self, lane: L) -> None:
        state = self._lanes.pop(lane)
        for key in state.entries:
            del self._lane_of[key]
        self._sealed.append(Batch(lane, tuple(state.entries.values())))


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def bucket_confidence(confidence: int | None) -> int | None:
    return None if confidence is None else confidence - confidence % CONFIDENCE_STEP


def bucket_expiration(expiration: datetime, days: int = 1) -> datetime:
    """The first UTC midnight at or after `expiration` that is a whole multiple of `days` days since the epoch."""
    moment = expiration.astimezone(UTC)
    step = timedelta(days=days)
    buckets = math.ceil((moment - _EPOCH) / step)
    return _EPOCH + buckets * step


def session_view(obj: IntelObject, expiry_days: int = 1) -> IntelObject:
    """The object as an import session can state it: bucketed confidence and expiry. An active expiry is
    rounded up to `expiry_days`; an expiring one (\"now\") down to the minute, so it is never in the future."""
    if obj.status is IntelStatus.INACTIVE:
        expiration = obj.expiration.replace(second=0, microsecond=0)
    else:
        expiration = bucket_expiration(obj.expiration, expiry_days)
    return replace(obj, confidence=bucket_confidence(obj.confidence), expiration=expiration)


@dataclass
class SessionGroup(Generic[T]):
    """Items one import session states correctly: shared fields in `view` (shared tags only) and one itype per
    kind of observable (the session's `ip_mapping`, `domain_mapping`, …)."""

    view: IntelObject
    mappings: dict[str, str]
    members: list[T]

    def admits(self, obj: IntelObject) -> bool:
        return self.mappings.get(obj.kind.import_mapping_field, obj.itype) == obj.itype

    def add(self, item: T, obj: IntelObject) -> None:
        self.mappings[obj.kind.import_mapping_field] = obj.itype
        self.members.append(item)
        self.view = replace(self.view, tags=tuple(t for t in self.view.tags if t in obj.tags))


def import_groups(items: Iterable[T], intel: Callable[[T], IntelObject], expiry_days: int = 1) -> list[SessionGroup[T]]:
    """Groups items whose objects one import session can state correctly. IPs, domains, URLs… share a session
    when everything else it states agrees; two itypes of one kind need two sessions."""
    groups: dict[tuple[object, ...], list[SessionGroup[T]]] = {}
    for item in items:
        view = session_view(intel(item), expiry_days)
        candidates = groups.setdefault(_session_key(view), [])
        group = next((g for g in candidates if g.admits(view)), None)
        if group is None:
            group = SessionGroup(view, {}, [])
            candidates.append(group)
        group.add(item, view)
    return [group for candidates in groups.values() for group in candidates]


def _session_key(view: IntelObject) -> tuple[object, ...]:
    if view.status is IntelStatus.INACTIVE:
        # An expiring session states only the itypes and the expiry (see `payloads.import_request`).
        return (view.status, view.expiration)
    return (view.status, view.tlp, view.severity, view.confidence, view.expiration, view.threat_type)
