"""The publisher's ThreatStream requests on the common rate-and-retry engine, on the manual clock: one budget per
request, a Retry-After honoured by every caller, the rate setting as a hard cap, and a ceiling nobody told the
publisher found against the sandbox (its `threatstream.rate_ceiling`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.fixtures.clock import ManualClock
from tests.fixtures.publisher import sandbox_settings
from tests.fixtures.sandbox import SandboxFactory
from tibridge.publisher.app import gateway_for, threatstream_engine
from tibridge.publisher.payloads import owned_search, session_request
from tibridge.publisher.settings import ThreatStreamSettings
from tibridge.publisher.threatstream import Outcome, ThreatStreamClient

BASE_URL = "https://threatstream.test/api"
DEFAULT_INITIAL_RATE = ThreatStreamSettings.model_fields["initial_rate_per_second"].default
SEARCH = owned_search("tibridge", None)


class ThreatStream:
    """A mock transport's handler: answers `answer(n)` to the n-th request (1, 2, …) and notes when each came."""

    def __init__(self, clock: ManualClock, answer: Callable[[int], httpx.Response] | None = None) -> None:
        self.clock = clock
        self.answer = answer or (lambda _: httpx.Response(200, json={"meta": {"next": None}, "objects": []}))
        self.sent_at: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent_at.append(self.clock.monotonic())
        return self.answer(len(self.sent_at))


def client_on(threatstream: ThreatStream, clock: ManualClock, **settings: Any) -> ThreatStreamClient:
    """The client as `gateway_for` makes it (the engine from the settings), over the mock transport."""
    values: dict[str, Any] = {"username": "analyst", "api_key": "k", "retry_base_delay_seconds": 0.5, **settings}
    engine = threatstream_engine(ThreatStreamSettings(**values), clock)
    http = httpx.AsyncClient(transport=httpx.MockTransport(threatstream), base_url=BASE_URL)
    return ThreatStreamClient(http, "analyst", SecretStr("k"), engine)


def gaps(moments: list[float]) -> list[float]:
    return [round(later - earlier, 6) for earlier, later in itertools.pairwise(moments)]


async def test_a_429_storm_spends_the_requests_attempts_once() -> None:
    clock = ManualClock()
    threatstream = ThreatStream(clock, lambda _: httpx.Response(429, headers={"Retry-After": "2"}))
    client = client_on(threatstream, clock, max_attempts=4)
    answer = await client.send(SEARCH)
    assert answer.outcome is Outcome.UNAVAILABLE
    assert "kept answering 429" in answer.detail
    # Four requests, each after the announced wait: the budget is the request's, and nothing retries beneath it.
    assert len(threatstream.sent_at) == 4
    assert gaps(threatstream.sent_at) == [2.0] * 3
    counts = client.counts()
    assert (counts.requests, counts.retries, counts.throttled) == (4, 3, 4)


async def test_each_request_has_its_own_budget() -> None:
    clock = ManualClock()
    # The first request's three attempts fail; the next request starts with a full budget and passes at once.
    threatstream = ThreatStream(clock, lambda sent: httpx.Response(503) if sent <= 3 else httpx.Response(200, json={}))
    client = client_on(threatstream, clock, max_attempts=3)
    assert (await client.send(SEARCH)).outcome is Outcome.UNAVAILABLE
    assert (await client.send(session_request("7"))).outcome is Outcome.ACCEPTED
    assert len(threatstream.sent_at) == 4


async def test_a_retry_after_holds_back_every_caller_of_the_process() -> None:
    clock = ManualClock()

    def answer(sent: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "5"}) if sent == 1 else httpx.Response(200, json={})

    threatstream = ThreatStream(clock, answer)
    client = client_on(threatstream, clock)
    # The first request is sent (and throttled) before the others ask; they share the process's one pacer.
    answers = await asyncio.gather(client.send(SEARCH), client.send(session_request("7")), client.send(SEARCH))
    assert [one.outcome for one in answers] == [Outcome.ACCEPTED] * 3
    throttled_at, *later = threatstream.sent_at
    assert len(later) == 3
    assert all(moment >= throttled_at + 5 for moment in later), threatstream.sent_at


async def test_the_rate_setting_is_a_hard_cap_the_adaptive_rate_never_passes() -> None:
    clock = ManualClock()
    threatstream = ThreatStream(clock)
    client = client_on(threatstream, clock, rate_per_second=2)
    for _ in range(40):
        assert (await client.send(SEARCH)).outcome is Outcome.ACCEPTED
    # Every answer was clean and every request waited for the rate: it would grow, but the cap holds it.
    assert min(gaps(threatstream.sent_at)) >= 0.5 - 1e-6
    pace = client.counts().pace
    assert pace is not None
    assert pace.peak_rate == 2


async def test_without_a_cap_clean_answers_raise_the_rate() -> None:
    clock = ManualClock()
    threatstream = ThreatStream(clock)
    client = client_on(threatstream, clock)
    for _ in range(200):
        await client.send(SEARCH)
    pace = client.counts().pace
    assert pace is not None
    assert pace.rate > 4 * DEFAULT_INITIAL_RATE
    assert clock.monotonic() < 200 / DEFAULT_INITIAL_RATE / 2


@pytest.mark.parametrize("ceiling", [3, 20])
async def test_an_unknown_ceiling_is_found_and_sustained_without_a_request_inside_a_retry_after(
    sandbox_factory: SandboxFactory, ceiling: float
) -> None:
    """The sandbox's ThreatStream takes `ceiling` requests/s (a token bucket of one second's worth, 429 and
    Retry-After beyond); the publisher's client, as `gateway_for` builds it with the default pacing, is not told.
    One request at a time, as the delivery loop sends them: after a warm-up they are answered at >= 90 % of the
    ceiling, and no request arrives inside an announced Retry-After window. Time is the manual clock."""
    clock = ManualClock()
    faults = {"threatstream": {"rate_ceiling": ceiling}}
    warm_up, requests = 10.0, round(ceiling * 50)
    async with sandbox_factory(clock=clock, indicators=0, faults=faults) as server, contextlib.AsyncExitStack() as res:
        settings = sandbox_settings(server, threatstream_initial_rate_per_second=DEFAULT_INITIAL_RATE)
        assert settings.threatstream.rate_per_second is None
        gateway = gateway_for(settings, res, clock)
        answered: list[float] = []
        for _ in range(requests):
            if (await gateway.send(SEARCH)).outcome is Outcome.ACCEPTED:
                answered.append(clock.monotonic())
        stats = server.state.stats
    end = clock.monotonic()
    assert len(answered) == requests  # every request got through in the end
    assert stats.inside_retry_after["threatstream"] == 0
    assert stats.requests["threatstream"]["429"] > 0  # it did go past the ceiling, and came back
    sustained = sum(1 for moment in answered if moment >= warm_up) / (end - warm_up)
    assert sustained >= 0.9 * ceiling
    counts = gateway.counts()
    assert counts.requests == requests + stats.requests["threatstream"]["429"]


async def test_the_client_as_built_retries_nothing_beneath_the_engines_budget(sandbox_factory: SandboxFactory) -> None:
    """The real stack (`gateway_for`: httpx's own transport, the engine) against a ThreatStream that throttles
    everything: exactly the configured attempts reach it."""
    clock = ManualClock()
    faults = {"threatstream": {"p429": 1.0, "retry_after_seconds": 3}}
    async with sandbox_factory(clock=clock, indicators=0, faults=faults) as server, contextlib.AsyncExitStack() as res:
        gateway = gateway_for(sandbox_settings(server, threatstream_max_attempts=5), res, clock)
        answer = await gateway.send(SEARCH)
        stats = server.state.stats
    assert answer.outcome is Outcome.UNAVAILABLE
    assert dict(stats.requests["threatstream"]) == {"429": 5}
    assert stats.inside_retry_after["threatstream"] == 0
    assert clock.monotonic() >= 4 * 3
