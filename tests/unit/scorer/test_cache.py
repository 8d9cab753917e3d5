"""The reputation cache: TTL, bound, negative entries, single flight."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.clock import ManualClock
from tests.fixtures.scorer import MALICIOUS
from tibridge.common.contracts import Reputation
from tibridge.common.metrics import Tally
from tibridge.scorer.cache import CacheCounts, SingleFlightCache


class Loader:
    def __init__(self, value: Reputation | None = MALICIOUS) -> None:
        self.value = value
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None

    async def __call__(self) -> Reputation | None:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


def make_cache(clock: ManualClock, *, ttl: float = 60, max_entries: int = 100) -> SingleFlightCache[Reputation | None]:
    return SingleFlightCache(max_entries=max_entries, ttl_seconds=ttl, clock=clock, lookups=lookups())


def lookups() -> Tally:
    return Tally("tibridge.test.lookups", "Lookups in a test cache")


async def test_a_value_is_looked_up_once_per_ttl() -> None:
    clock = ManualClock()
    cache = make_cache(clock, ttl=60)
    load = Loader()
    assert await cache.get("k", load) == MALICIOUS
    clock.advance(59)
    assert await cache.get("k", load) == MALICIOUS
    assert load.calls == 1
    clock.advance(2)
    await cache.get("k", load)
    assert load.calls == 2


async def test_no_reputation_is_cached_too() -> None:
    cache = make_cache(ManualClock())
    load = Loader(value=None)
    assert await cache.get("k", load) is None
    assert await cache.get("k", load) is None
    assert load.calls == 1


async def test_concurrent_callers_share_one_lookup() -> None:
    cache = make_cache(ManualClock(), max_entries=10)
    load = Loader()
    load.release.clear()
    waiters = [asyncio.create_task(cache.get("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    load.release.set()
    assert await asyncio.gather(*waiters) == [MALICIOUS] * 5
    assert load.calls == 1
    assert cache.counts() == CacheCounts(hits=0, misses=1, shared=4)


async def test_a_failed_lookup_reaches_every_waiter_and_is_not_cached() -> None:
    cache = make_cache(ManualClock())
    load = Loader()
    load.release.clear()
    load.error = RuntimeError("graph down")
    waiters = [asyncio.create_task(cache.get("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    load.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in results)
    load.error = None
    assert await cache.get("k", load) == MALICIOUS
    assert load.calls == 2


async def test_one_caller_giving_up_does_not_cancel_the_others() -> None:
    cache = make_cache(ManualClock())
    load = Loader()
    load.release.clear()
    quitter = asyncio.create_task(cache.get("k", load))
    stayer = asyncio.create_task(cache.get("k", load))
    await asyncio.sleep(0)
    quitter.cancel()
    load.release.set()
    assert await stayer == MALICIOUS
    with pytest.raises(asyncio.CancelledError):
        await quitter


async def test_the_cache_is_bounded() -> None:
    cache = make_cache(ManualClock(), max_entries=3)
    for key in "abcde":
        await cache.get(key, Loader())
    assert len(cache) == 3
