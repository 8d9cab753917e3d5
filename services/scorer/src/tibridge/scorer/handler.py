"""The scorer's handler: an indicator in, its reputation through the cache, its verdict out on `scored`.

Settled by the consumer: the input is completed once the verdict is on the bus; a lookup that kept failing
(`LookupFailed`) gives it back for later, a host Graph will never answer dead-letters it, and Graph refusing
the token pauses the consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tibridge.common.aio import waiting_on_dependency
from tibridge.common.consumer import SettledCounts
from tibridge.common.contracts import IndicatorCollected, IndicatorScored, Reputation, Verdict
from tibridge.common.metrics import Snapshot, Tally
from tibridge.common.producer import Producer
from tibridge.common.topology import SCORED_TOPIC
from tibridge.scorer.cache import CacheCounts, SingleFlightCache
from tibridge.scorer.reputation import GraphCounts
from tibridge.scorer.settings import ScoringSettings
from tibridge.scorer.verdicts import decide, needs_lookup


class Reputations(Protocol):
    """Where reputations come from (the Graph batcher, or a fake in tests)."""

    async def lookup(self, host: str) -> Reputation | None:
        """Raises `LookupFailed` when the lookup should be tried again later."""
        ...

    async def probe(self) -> bool:
        """True when the source accepts us (again)."""
        ...

    def counts(self) -> GraphCounts: ...


@dataclass(frozen=True)
class VerdictCounts(Snapshot):
    """Indicators scored, per verdict by reason."""

    publish: Mapping[str, int]
    drop: Mapping[str, int]
    expire: Mapping[str, int]

    @property
    def scored(self) -> int:
        return sum(self.publish.values()) + sum(self.drop.values()) + sum(self.expire.values())

    @property
    def forwarded(self) -> int:
        """What the publisher's subscription receives: publish and expire verdicts."""
        return sum(self.publish.values()) + sum(self.expire.values())


@dataclass(frozen=True)
class ScorerCounts(Snapshot):
    verdicts: VerdictCounts
    classifications: Mapping[str, int]  # of the reputations scored with
    cache: CacheCounts
    graph: GraphCounts
    settled: SettledCounts


class ScorerHandler:
    payload_type = IndicatorCollected

    def __init__(
        self,
        producer: Producer,
        rules: ScoringSettings,
        cache: SingleFlightCache[Reputation | None],
        reputations: Reputations,
    ) -> None:
        self._producer = producer
        self._rules = rules
        self._cache = cache
        self._reputations = reputations
        self._verdicts = Tally("tibridge.scorer.verdicts", "Indicators scored, by verdict and reason")
        self._classifications = Tally("tibridge.scorer.classifications", "Reputations scored with, by classification")

    async def handle(self, indicator: IndicatorCollected) -> None:
        reputation: Reputation | None = None
        if needs_lookup(indicator):
            observable = indicator.observable
            # Rate limits and Retry-After windows make lookups wait; that is not time this message costs.
            with waiting_on_dependency():
                reputation = await self._cache.get(observable.key, lambda: self._reputations.lookup(observable.value))
        scored = decide(indicator, reputation, self._rules)
        await self._producer.send(SCORED_TOPIC, [scored])
        self._count(scored)

    async def probe(self) -> bool:
        return await self._reputations.probe()

    def verdicts(self) -> VerdictCounts:
        return VerdictCounts(
            publish=self._verdicts.by("reason", verdict=Verdict.PUBLISH),
            drop=self._verdicts.by("reason", verdict=Verdict.DROP),
            expire=self._verdicts.by("reason", verdict=Verdict.EXPIRE),
        )

    def classifications(self) -> dict[str, int]:
        return self._classifications.by("classification")

    def _count(self, scored: IndicatorScored) -> None:
        self._verdicts.add(verdict=str(scored.verdict), reason=scored.reason)
        if scored.reputation is not None:
            self._classifications.add(classification=str(scored.reputation.classification))
