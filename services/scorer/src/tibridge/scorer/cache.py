"""A bounded TTL cache with single flight: one lookup per key per TTL, shared by every concurrent caller.

Values may be None (MDTI's "no reputation"), cached like any other. Failed lookups are not cached.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import TTLCache

from tibridge.common.clock import Clock
from tibridge.common.metrics import Snapshot, Tally

V = TypeVar("V")

HIT = "hit"
MISS = "miss"  # a load
SHARED = "shared"  # joined a load already under way


@dataclass(frozen=True)
class CacheCounts(Snapshot):
    hits: int
    misses: int
    shared: int


class SingleFlightCache(Generic[V]):
    def __init__(self, *, max_entries: int, ttl_seconds: float, clock: Clock, lookups: Tally) -> None:
        """`lookups` counts every `get` by its `outcome`: hit, miss or shared."""
        self._entries: TTLCache[str, V] = TTLCache(maxsize=max_entries, ttl=ttl_seconds, timer=clock.monotonic)
        self._loading: dict[str, asyncio.Task[V]] = {}
        self._lookups = lookups

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> CacheCounts:
        return CacheCounts(
            hits=self._lookups.total(outcome=HIT),
            misses=self._lookups.total(outcome=MISS),
            shared=self._lookups.total(outcome=SHARED),
        )

    async def get(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or the result of `load()`; concurrent callers for one key share one `load()`."""
        try:
            value = self._entries[key]  # one look (a TTLCache checks expiry on each)
        except KeyError:
            pass
        else:
            self._lookups.add(outcome=HIT)
            return value
        task = self._loading.get(key)
        if task is None:
            self._lookups.add(outcome=MISS)
            task = asyncio.create_task(self._load(key, load))
            task.add_done_callback(functools.partial(self._forget, key))
            self._loading[key] = task
        else:
            self._lookups.add(outcome=SHARED)
        # Shielded: one caller giving up (its message was abandoned on stop) does not cancel the others' lookup.
        return await asyncio.shield(task)

    async def _load(self, key: str, load: Callable[[], Awaitable[V]]) -> V:
        value = await load()
        self._entries[key] = value
        return value

    def _forget(self, key: str, task: asyncio.Task[V]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        # Every waiter may have gone; a failure is theirs to report, not the event loop's.
        if not task.cancelled():
            task.exception()
