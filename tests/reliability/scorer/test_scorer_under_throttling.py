"""Graph throttles: every indicator is still scored, and no request arrives inside a Retry-After window."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tests.fixtures.sandbox import SandboxFactory
from tests.fixtures.scorer import SEE_EVERYTHING, cases_from, drain_scored, needs_lookup, running_scorer, until
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox import SandboxServer
from tibridge.scorer.handler import ScorerCounts


@dataclass
class Run:
    counts: ScorerCounts
    graph: dict[str, Any]
    statuses: dict[str, int]
    inside_retry_after: int
    unique_lookups: int


async def score_everything(server: SandboxServer, **settings: Any) -> Run:
    """Scores the sandbox's indicators (30 % repeated lookups) and checks every verdict."""
    cases = cases_from(server.expected(), repeated_share=0.3)
    bus = MemoryBus(SEE_EVERYTHING)
    async with running_scorer(server.endpoints.graph, bus, **settings) as scorer:
        await scorer.send(case.indicator for case in cases)
        await until(lambda: scorer.scored == len(cases), seconds=60)
        counts = scorer.counts
    expected = {case.indicator.indicator_id: (case.verdict, case.reason) for case in cases}
    assert {item.indicator.indicator_id: (item.verdict, item.reason) for item in await drain_scored(bus)} == expected
    assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0
    stats = server.stats()
    return Run(
        counts,
        stats["graph"],
        stats["requests"]["graph"],
        stats["inside_retry_after"]["graph"],
        len({case.indicator.observable.key for case in cases if needs_lookup(case)}),
    )


async def test_a_429_storm_delays_lookups_but_loses_none(sandbox_factory: SandboxFactory) -> None:
    faults = {"graph": {"p429": 0.4, "retry_after_seconds": 1}}
    async with sandbox_factory(indicators=100, faults=faults) as server:
        run = await score_everything(server)
    assert run.graph["items_429"] > 0
    # Whole $batch requests are throttled too, not only their items.
    assert run.counts.graph.throttled == run.graph["items_429"] + run.statuses.get("429", 0)
    assert run.inside_retry_after == 0
    assert run.graph["http_requests"] <= math.ceil(run.unique_lookups / 20) + run.counts.graph.retries


async def test_a_ceiling_nobody_told_us_is_found_and_honoured_with_default_settings(
    sandbox_factory: SandboxFactory,
) -> None:
    """Graph takes 100 lookups/s (the sandbox's token bucket); the scorer starts at its default rate, doubles it
    until 429s come, and then keeps below the ceiling it found: every indicator scored, no request inside a
    Retry-After window. (The throughput it sustains is measured by `bench/graph_ceiling.py`, not asserted.)"""
    faults = {"graph": {"rate_ceiling": 100}}
    async with sandbox_factory(indicators=1500, faults=faults) as server:
        run = await score_everything(server)
    assert run.graph["items_429"] > 0
    assert run.inside_retry_after == 0
    assert run.counts.graph.peak_rate > 100
    assert run.graph["http_requests"] <= math.ceil(run.unique_lookups / 20) + run.counts.graph.retries


async def test_a_rate_ceiling_below_ours_is_honoured_through_its_retry_after(sandbox_factory: SandboxFactory) -> None:
    faults = {"graph": {"rate_ceiling": 20}}
    async with sandbox_factory(indicators=100, faults=faults) as server:
        run = await score_everything(server, graph_max_lookups_per_second=40)
    assert run.graph["items_429"] > 0
    assert run.inside_retry_after == 0


async def test_our_own_ceiling_keeps_graph_from_ever_throttling_us(sandbox_factory: SandboxFactory) -> None:
    faults = {"graph": {"rate_ceiling": 20}}
    async with sandbox_factory(indicators=100, faults=faults) as server:
        run = await score_everything(server, graph_max_lookups_per_second=15)
    assert run.graph["items_429"] == 0
    assert run.graph["lookups"] == run.unique_lookups


async def test_server_errors_dropped_connections_and_hangs_are_retried_until_every_indicator_is_scored(
    sandbox_factory: SandboxFactory,
) -> None:
    faults = {
        "graph": {"p500": 0.15, "p503": 0.1, "p_malformed": 0.05, "p_drop": 0.05, "p_hang": 0.05, "hang_seconds": 5}
    }
    async with sandbox_factory(indicators=100, faults=faults) as server:
        run = await score_everything(server, graph_request_timeout_seconds=0.5, graph_retry_base_delay_seconds=0.02)
    assert run.counts.graph.retries > 0
    assert run.graph["lookups"] >= run.unique_lookups
