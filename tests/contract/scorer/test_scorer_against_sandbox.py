"""The scorer as `build` makes it, against the sandbox's Graph: verdicts (unknown enum values too), batching
economy, single GETs, and every refusal mode pausing it."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

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
from tibridge.common.contracts import Classification, ObservableType, RuleSeverity, Verdict
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox.api_graph import REFUSALS
from tibridge.sandbox.reputation import HostReputation, HostRule


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


@pytest.mark.parametrize(
    ("refusal", "fix"),
    [
        ("forbidden", "ThreatIntelligence.Read.All"),
        ("security_reader", "Security Reader role"),
        ("tenant_unverified", "verified"),
        ("licence_500", "Microsoft Defender XDR or Microsoft Sentinel"),
    ],
)
async def test_a_refusal_pauses_the_scorer_with_graphs_words_and_leaves_every_message_on_the_bus(
    sandbox_factory: SandboxFactory, refusal: str, fix: str
) -> None:
    """Every way Graph refuses a tenant — 403s, or a 500 for every host (how a missing licence was answered) —
    pauses the scorer: readiness says what Graph said and what to fix; nothing is dead-lettered or retried
    message by message."""
    hosts = [indicator(f"host{n}.example") for n in range(24)]
    async with sandbox_factory(indicators=0, graph_refusal=refusal) as server:
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus) as scorer:
            await scorer.send(hosts)
            await scorer.send([indicator("198.51.100.20", ObservableType.IPV4)])
            await until(lambda: scorer.consumer.paused_reason is not None, seconds=10)
            [problem] = await scorer.readiness()
            # Paused: no message is taken, none is dead-lettered, every one stays for later.
            await until(lambda: scorer.consumer.in_flight == 0)
            assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == len(hosts) + 1
            assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0
            assert scorer.scored == 0
            requests = server.stats()["graph"]["http_requests"]
        retries = scorer.counts.graph.retries
    _, _, message = REFUSALS[refusal]
    assert "Microsoft Threat Intelligence (formerly MDTI)" in problem
    assert message in problem
    assert fix in problem
    assert "entitlement" not in problem
    # Found out from the first requests (and a probe or two), not by retrying every message's lookup.
    assert requests <= 4
    assert retries <= len(hosts) + 1


async def test_unknown_future_enum_values_are_scored_like_any_other(sandbox_factory: SandboxFactory) -> None:
    future = HostReputation(90, "unknownFutureValue", (HostRule("New rule", severity="unknownFutureValue"),))
    async with sandbox_factory(indicators=0, reputations={"future.example": future}) as server:
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus) as scorer:
            await scorer.send([indicator("future.example")])
            await until(lambda: scorer.scored == 1)
        [scored] = await drain_scored(bus)
    assert scored.verdict is Verdict.PUBLISH
    assert scored.reputation is not None
    assert scored.reputation.classification is Classification.UNKNOWN_FUTURE_VALUE
    assert scored.reputation.rules[0].severity is RuleSeverity.UNKNOWN_FUTURE_VALUE


async def test_single_get_lookups_give_the_same_verdicts_one_request_per_lookup(
    sandbox_factory: SandboxFactory,
) -> None:
    async with sandbox_factory(indicators=300) as server:
        cases = cases_from(server.expected(), repeated_share=0.3)
        unique = len({case.indicator.observable.key for case in cases if needs_lookup(case)})
        bus = MemoryBus(SEE_EVERYTHING)
        async with running_scorer(server.endpoints.graph, bus, graph_lookup_mode="single") as scorer:
            await scorer.send(case.indicator for case in cases)
            await until(lambda: scorer.scored == len(cases), seconds=30)
            counts = scorer.counts
        stats = await sandbox_stats(server.base_url)
        assert_verdicts(cases, await drain_scored(bus))
    assert stats["graph"]["batch_requests"] == 0
    assert stats["graph"]["lookups"] == unique
    assert stats["graph"]["http_requests"] == counts.graph.requests == unique + counts.graph.retries
