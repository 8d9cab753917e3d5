"""Gathering held messages into batches. Pure code: time is passed in.

A batch gathers messages until it holds `max_observables` observables to write (an entry whose newest payload
the caller says is `written`: what fills a ThreatStream request; an expiry is a request of its own by id, or
none, so it does not fill a batch) or `max_messages` messages (what the consumer may hold at once: it can
give no more), or it is due: its oldest message has waited
`max_age` seconds (the latency bound while the upstream keeps producing), or the upstream is idle and nothing
arrived for a quiet moment (so the last partial batch of a backfill, or of a `--once` run, goes at once). The
caller says whether the upstream is idle; the batcher only knows arrivals.

Several messages about one observable coalesce into one entry whose payload is the newest by indicator time
(a revocation that arrives after an older publication wins, and so does a publication newer than a
revocation), while the entry keeps every message it stands for, to settle them together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")
M = TypeVar("M")


@dataclass
class Entry(Generic[K, P, M]):
    """One observable in a batch: the newest payload about it and every message it stands for."""

    key: K
    payload: P
    order: datetime
    messages: list[M]
    written: bool = True


@dataclass
class Batch(Generic[K, P, M]):
    entries: dict[K, Entry[K, P, M]] = field(default_factory=dict)
    messages: int = 0
    written: int = 0  # entries whose newest payload is written
    started: float = 0.0
    last_arrival: float = 0.0


class Batcher(Generic[K, P, M]):
    def __init__(self, max_observables: int, max_messages: int, max_age_seconds: float, quiet_seconds: float) -> None:
        if min(max_observables, max_messages) < 1 or max_age_seconds <= 0 or quiet_seconds <= 0:
            raise ValueError("a batch needs room for a message, a positive age and a positive quiet time")
        self._max_observables = max_observables
        self._max_messages = max_messages
        self._max_age = max_age_seconds
        self._quiet = quiet_seconds
        self._open: Batch[K, P, M] | None = None
        self._sealed: deque[Batch[K, P, M]] = deque()

    @property
    def held(self) -> int:
        """Messages waiting in open or sealed batches."""
        return sum(batch.messages for batch in (*self._sealed, *([self._open] if self._open else [])))

    def add(self, key: K, order: datetime, payload: P, message: M, now: float, *, written: bool = True) -> bool:
        """Adds a message (`written`: whether its payload, should it be the newest of its entry, is written);
        True when that filled the batch (it is then sealed and `take` hands it out)."""
        batch = self._open
        if batch is None:
            batch = self._open = Batch(started=now)
        batch.last_arrival = now
        batch.messages += 1
        entry = batch.entries.get(key)
        if entry is None:
            batch.entries[key] = Entry(key, payload, order, [message], written)
            batch.written += written
        else:
            entry.messages.append(message)
            if order >= entry.order:
                batch.written += written - entry.written
                entry.payload, entry.order, entry.written = payload, order, written
        if batch.written >= self._max_observables or batch.messages >= self._max_messages:
            self._seal()
            return True
        return False

    def take(self, now: float, *, upstream_idle: bool) -> Batch[K, P, M] | None:
        """The next batch that is full or due (it leaves the batcher), if any."""
        batch = self._open
        if not self._sealed and batch is not None:
            aged = now - batch.started >= self._max_age
            if aged or (upstream_idle and self.quiet(now)):
                self._seal()
        return self._sealed.popleft() if self._sealed else None

    def drain(self) -> list[Batch[K, P, M]]:
        """Every batch, due or not (on stop)."""
        if self._open is not None:
            self._seal()
        drained = list(self._sealed)
        self._sealed.clear()
        return drained

    def quiet(self, now: float) -> bool:
        """Nothing has arrived in the open batch for the quiet time."""
        return self._open is not None and now - self._open.last_arrival >= self._quiet

    def quiet_at(self) -> float | None:
        """When the open batch has been quiet long enough for an idle upstream to let it go (monotonic seconds)."""
        return None if self._open is None else self._open.last_arrival + self._quiet

    def opened_at(self) -> float | None:
        """When the open batch took its first message (monotonic seconds)."""
        return None if self._open is None else self._open.started

    def age_limit(self) -> float | None:
        """When the open batch goes whatever the upstream does (monotonic seconds)."""
        return None if self._open is None else self._open.started + self._max_age

    def _seal(self) -> None:
        if self._open is not None:
            self._sealed.append(self._open)
            self._open = None
