"""The scorer as `build` makes it, against the sandbox's Graph: verdicts, batching economy, 403 pause."""

from __future__ import annotations

import math
from typing import Any

import httpx

from tests.fixtures.sandbox import SandboxFactory
from tests.fixtures.scorer import (
    SEE_EVERYTHING,
    Case,
    cases_from,
    drain_scored,
    indicator,
    needs_lookup,
    running_scorer,
    until,
)
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.contracts import ObservableType
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION


async def sandbox_stats(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as control:
        response = await control.get("/_sandbox/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


def assert_verdicts(cases: list[Case], scored: list[Any]) -> None:
    expected = {case.indicator.indicator_id: (case.verdict, case.reason) for case in cases}
    actual = {item.indicator.indicator_id: (item.verdict, item.reason) for item in scored}
    assert actual == expected


async def test_repeated_observables_cost_one_graph_request_per_twenty_unique(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=400) as server:
        cases = cases_from(server.expected(), repeated_share=0.3)
        looked_up = [case for case in cases if needs_lookup(case)]
        unique = len({case.indicator.observable.key for case in looked_up})
        assert 1 - unique / len(looked_up) >= 0.3
        assert unique >= 60, "the dataset should need several batches"
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus) as scorer:
            await scorer.send(case.indicator for case in cases)
            await until(lambda: scorer.scored == len(cases), seconds=30)
            counts = scorer.counts
        stats = await sandbox_stats(server.base_url)
        assert_verdicts(cases, await drain_scored(bus))

    retries = counts.graph.retries
    assert stats["graph"]["http_requests"] <= math.ceil(unique / 20) + retries
    assert stats["graph"]["lookups"] == unique
    assert counts.cache.misses == unique
    assert counts.cache.hits + counts.cache.shared == len(looked_up) - unique
    assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0


async def test_never_seen_hosts_answered_as_unknown_score_zero_are_no_reputation(
    sandbox_factory: SandboxFactory,
) -> None:
    async with sandbox_factory(indicators=150, never_seen="unknown") as server:
        cases = cases_from(server.expected(), repeated_share=0)
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus) as scorer:
            await scorer.send(case.indicator for case in cases)
            await until(lambda: scorer.scored == len(cases), seconds=30)
        assert_verdicts(cases, await drain_scored(bus))
    assert any(case.reason == "no_reputation" for case in cases)


async def test_a_refused_token_pauses_the_scorer_and_leaves_every_message_on_the_bus(
    sandbox_factory: SandboxFactory,
) -> None:
    async with sandbox_factory(indicators=0, graph_forbidden=True) as server:
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus) as scorer:
            await scorer.send(indicator(f"host{n}.example") for n in range(5))
            await scorer.send([indicator("198.51.100.20", ObservableType.IPV4)])
            await until(lambda: scorer.consumer.paused_reason is not None)
            [problem] = await scorer.readiness()
            # Paused: no message is taken, none is dead-lettered, every one stays for later.
            await until(lambda: scorer.consumer.in_flight == 0)
            assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 6
            assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0
            assert scorer.scored == 0
    assert "Graph refused the token (HTTP 403)" in problem
    assert "ThreatIntelligence.Read.All" in problem
