"""The scorer as `assemble` composes it (handler, cache, consumer) over a fake reputation source, on the in-memory
bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from tests.fixtures.scorer import MALICIOUS, SEE_EVERYTHING, SUSPICIOUS, drain_scored, indicator, until
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.clock import SystemClock
from tibridge.common.consumer import Consumer, DependencyUnavailable, PermanentFailure
from tibridge.common.contracts import (
    InactiveReason,
    IndicatorCollected,
    IndicatorScored,
    ObservableType,
    Reputation,
    Verdict,
)
from tibridge.common.producer import Producer
from tibridge.common.settings import load_settings
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    Topology,
)
from tibridge.scorer.app import assemble, consumer_options
from tibridge.scorer.graph_batches import LookupFailed
from tibridge.scorer.handler import ScorerCounts
from tibridge.scorer.reputation import GraphCounts
from tibridge.scorer.settings import ScorerSettings


class FakeReputations:
    def __init__(self, known: dict[str, Reputation]) -> None:
        self.known = known
        self.asked: list[str] = []
        self.failure: Exception | None = None

    async def lookup(self, host: str) -> Reputation | None:
        self.asked.append(host)
        await asyncio.sleep(0.01)
        if self.failure is not None:
            raise self.failure
        return self.known.get(host)

    async def probe(self) -> bool:
        return self.failure is None

    def counts(self) -> GraphCounts:
        return GraphCounts(batch_requests=0, items=0, throttled=0, retries=0)


class GatedBus(MemoryBus):
    """Holds publishes to `scored` until the gate opens."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.gate = asyncio.Event()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        if topic == SCORED_TOPIC:
            await self.gate.wait()
        await super().publish(topic, messages)


class Rig:
    def __init__(self, reputations: FakeReputations, bus: MemoryBus) -> None:
        self.bus = bus
        self.reputations = reputations
        settings = load_settings(
            ScorerSettings,
            bus="memory",
            scorer_cache_max_entries=100,
            scorer_cache_ttl_seconds=60,
            graph_probe_interval_seconds=0.05,
            shutdown_grace_seconds=1,
        )
        consumer = replace(consumer_options(settings), receive_wait_seconds=0.05)
        self.service = assemble(settings, bus, SystemClock(), consumer, reputations=reputations)
        [worker] = self.service.workers
        assert isinstance(worker, Consumer)
        self.consumer = worker

    def counts(self) -> ScorerCounts:
        return self.service.snapshot(ScorerCounts)

    async def send(self, *indicators: IndicatorCollected) -> None:
        await Producer(self.bus, SystemClock()).send(INDICATORS_TOPIC, indicators)

    async def scored(self) -> list[IndicatorScored]:
        return await drain_scored(self.bus)

    def depth(self, *, dead_letter: bool = False) -> int:
        return self.bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=dead_letter)


@asynccontextmanager
async def running(known: dict[str, Reputation], bus: MemoryBus | None = None) -> AsyncIterator[Rig]:
    rig = Rig(FakeReputations(known), bus or MemoryBus(SEE_EVERYTHING))
    stop = asyncio.Event()
    task = asyncio.create_task(rig.consumer.run(stop))
    try:
        yield rig
    finally:
        stop.set()
        await task


async def test_every_indicator_gets_its_verdict_and_its_input_is_settled() -> None:
    async with running({"evil.example": MALICIOUS, "203.0.113.9": SUSPICIOUS}) as rig:
        await rig.send(
            indicator("evil.example"),
            indicator("203.0.113.9", ObservableType.IPV4),
            indicator("nobody.example"),
            indicator("https://evil.example/x", ObservableType.URL),
            indicator("gone.example", inactive=InactiveReason.REVOKED),
        )
        await until(lambda: rig.counts().verdicts.scored == 5)
        await until(lambda: rig.depth() == 0)
    verdicts = {item.observable.value: (item.verdict, item.reason) for item in await rig.scored()}
    assert verdicts == {
        "evil.example": (Verdict.PUBLISH, "score_at_or_above_threshold"),
        "203.0.113.9": (Verdict.DROP, "below_threshold"),
        "nobody.example": (Verdict.DROP, "no_reputation"),
        "https://evil.example/x": (Verdict.DROP, "unscorable_type"),
        "gone.example": (Verdict.EXPIRE, "revoked"),
    }
    # Only active IPs and domains were looked up.
    assert sorted(rig.reputations.asked) == ["203.0.113.9", "evil.example", "nobody.example"]
    assert rig.counts().classifications == {"malicious": 1, "suspicious": 1}


async def test_many_messages_for_one_observable_share_one_lookup() -> None:
    async with running({"evil.example": MALICIOUS}) as rig:
        await rig.send(*(indicator("evil.example", version=str(n)) for n in range(10)))
        await until(lambda: rig.depth() == 0)
    assert rig.reputations.asked == ["evil.example"]
    assert len(await rig.scored()) == 10
    cache = rig.counts().cache
    assert cache.misses == 1
    assert cache.hits + cache.shared == 9


async def test_the_input_is_settled_only_after_the_verdict_is_on_the_bus() -> None:
    bus = GatedBus(SEE_EVERYTHING)
    async with running({"evil.example": MALICIOUS}, bus) as rig:
        await rig.send(indicator("evil.example"))
        await until(lambda: rig.reputations.asked != [])
        await asyncio.sleep(0.1)
        assert (rig.depth(), rig.consumer.in_flight) == (1, 1)
        bus.gate.set()
        await until(lambda: rig.depth() == 0)
    [scored] = await rig.scored()
    assert scored.verdict is Verdict.PUBLISH


async def test_a_lookup_out_of_attempts_goes_back_to_the_bus() -> None:
    async with running({"evil.example": MALICIOUS}) as rig:
        rig.reputations.failure = LookupFailed("Graph kept failing")
        await rig.send(indicator("evil.example"))
        await until(lambda: rig.counts().settled.abandoned >= 1)
        rig.reputations.failure = None
        await until(lambda: rig.depth() == 0)
    assert [item.verdict for item in await rig.scored()] == [Verdict.PUBLISH]
    assert rig.depth(dead_letter=True) == 0


async def test_a_refused_token_pauses_without_dead_lettering_and_resumes_once_fixed() -> None:
    reason = "Graph refused the token (HTTP 403): grant the app ThreatIntelligence.Read.All"
    async with running({"evil.example": MALICIOUS}) as rig:
        rig.reputations.failure = DependencyUnavailable(reason)
        await rig.send(*(indicator(f"h{n}.example") for n in range(3)))
        await until(lambda: rig.consumer.paused_reason is not None)
        assert rig.consumer.paused_reason == reason
        await asyncio.sleep(0.2)
        assert rig.depth() == 3
        assert rig.depth(dead_letter=True) == 0
        rig.reputations.failure = None
        await until(lambda: rig.depth() == 0)
        assert rig.consumer.paused_reason is None
    assert len(await rig.scored()) == 3


async def test_a_host_graph_will_never_answer_is_dead_lettered_with_the_reason() -> None:
    async with running({}) as rig:
        rig.reputations.failure = PermanentFailure("GraphRejectedHost", "Graph answered HTTP 400 for this host")
        await rig.send(indicator("bad.example"))
        await until(lambda: rig.depth(dead_letter=True) == 1)
    async with rig.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) as receiver:
        [message] = await receiver.receive(1, 0.1)
    assert message.dead_letter_reason == "GraphRejectedHost"


@pytest.mark.parametrize("body", [b"not json", b'{"schema_version": "9.0"}'])
async def test_unreadable_messages_are_dead_lettered(body: bytes) -> None:
    async with running({}) as rig:
        await rig.bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=body, message_id="bad")])
        await until(lambda: rig.depth(dead_letter=True) == 1)
    assert rig.reputations.asked == []
