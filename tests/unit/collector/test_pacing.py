"""Log Analytics' limits on our side: 5 queries in flight, 200 per 30 s, and nothing sent inside a Retry-After."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.clock import ManualClock
from tibridge.collector.pacing import Answer, GaveUp, LimitedRetries
from tibridge.common.http import RetryPolicy

OK = Answer(200, b"{}")


def limited(clock: ManualClock, *, concurrent: int = 5, per_window: int = 200, attempts: int = 4) -> LimitedRetries:
    return LimitedRetries(
        RetryPolicy(max_attempts=attempts, base_delay_seconds=1.0),
        clock,
        max_concurrent=concurrent,
        requests_per_window=per_window,
    )


async def test_never_more_queries_in_flight_than_allowed(clock: ManualClock) -> None:
    attempts = limited(clock, concurrent=5)
    in_flight, peak = 0, 0

    async def send() -> Answer:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
        return OK

    answers = await asyncio.gather(*(attempts.call(send) for _ in range(23)))
    assert answers == [OK] * 23
    assert peak == 5


async def test_never_more_queries_per_window_than_allowed(clock: ManualClock) -> None:
    attempts = limited(clock, per_window=3)
    sent: list[float] = []

    async def send() -> Answer:
        sent.append(clock.monotonic())
        return OK

    await asyncio.gather(*(attempts.call(send) for _ in range(7)))
    assert len(sent) == 7
    for index, moment in enumerate(sent):
        assert sum(1 for other in sent if moment - 30 < other <= moment) <= 3, (index, sent)
    assert sent[3] >= 30.0


async def test_a_retry_after_holds_back_every_query_not_only_the_throttled_one(clock: ManualClock) -> None:
    attempts = limited(clock)
    sent: list[float] = []
    throttled = False

    async def send() -> Answer:
        nonlocal throttled
        sent.append(clock.monotonic())
        if not throttled:
            throttled = True
            return Answer(429, b"{}", retry_after="7")
        return OK

    first = asyncio.create_task(attempts.call(send))
    for _ in range(100):
        await asyncio.sleep(0)
    assert throttled
    others = [asyncio.create_task(attempts.call(send)) for _ in range(4)]
    assert await asyncio.gather(first, *others) == [OK] * 5
    announced = sent[0]
    assert all(not announced < moment < announced + 7 for moment in sent[1:]), sent
    assert len(sent) == 6


async def test_attempts_are_bounded(clock: ManualClock) -> None:
    calls = 0

    async def send() -> Answer:
        nonlocal calls
        calls += 1
        return Answer(503, b"{}")

    with pytest.raises(GaveUp, match="503 after 3 attempts"):
        await limited(clock, attempts=3).call(send)
    assert calls == 3


async def test_a_retry_after_longer_than_we_wait_gives_up_at_once(clock: ManualClock) -> None:
    async def send() -> Answer:
        return Answer(429, b"{}", retry_after="3600")

    with pytest.raises(GaveUp):
        await limited(clock).call(send)
    assert clock.sleeps == []


async def test_refusals_are_answers_not_retried(clock: ManualClock) -> None:
    calls = 0

    async def send() -> Answer:
        nonlocal calls
        calls += 1
        return Answer(403, b"{}")

    assert (await limited(clock).call(send)).status == 403
    assert calls == 1
