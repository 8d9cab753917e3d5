"""The scorer's handler: indicator in, reputation through the cache, verdict out on `scored`, then settle."""

from __future__ import annotations

import logging
from typing import Protocol

from tibridge.common.bus.port import Bus, OutgoingMessage
from tibridge.common.clock import Clock
from tibridge.common.consumer import InFlight
from tibridge.common.contracts import IndicatorCollected, Observable, Reputation, envelope_for
from tibridge.common.telemetry import current_trace_context
from tibridge.common.topology import SCORED_TOPIC
from tibridge.scorer.batcher import LookupFailed
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.counts import ScorerCounts
from tibridge.scorer.policy import Policy

log = logging.getLogger(__name__)


class Reputations(Protocol):
    """Where reputations come from (the Graph batcher, or a fake in tests)."""

    async def lookup(self, host: str) -> Reputation | None:
        """Raises `LookupFailed` when the lookup should be tried again later."""
        ...

    async def probe(self) -> bool:
        """True when the source accepts us (again)."""
        ...


class ScorerHandler:
    payload_type = IndicatorCollected

    def __init__(
        self,
        bus: Bus,
        policy: Policy,
        cache: SingleFlightCache[Reputation | None],
        reputations: Reputations,
        clock: Clock,
        counts: ScorerCounts,
    ) -> None:
        self._bus = bus
        self._policy = policy
        self._cache = cache
        self._reputations = reputations
        self._clock = clock
        self._counts = counts

    async def handle(self, item: InFlight[IndicatorCollected]) -> None:
        indicator = item.payload
        reputation: Reputation | None = None
        if self._policy.needs_lookup(indicator):
            try:
                reputation = await self._reputation(indicator.observable)
            except LookupFailed as error:
                log.warning("abandoning message %s for redelivery: %s", item.message.message_id, error)
                self._counts.abandoned += 1
                await item.abandon()
                return
        scored = self._policy.decide(indicator, reputation)
        traceparent, tracestate = current_trace_context()
        envelope = envelope_for(scored, produced_at=self._clock.now(), traceparent=traceparent, tracestate=tracestate)
        await self._bus.publish(SCORED_TOPIC, [OutgoingMessage.from_envelope(envelope)])
        await item.complete()
        self._counts.scored(scored)

    async def flush(self) -> None:
        # Nothing is buffered here: every message is settled by its own `handle`.
        return None

    async def probe(self) -> bool:
        return await self._reputations.probe()

    async def _reputation(self, observable: Observable) -> Reputation | None:
        return await self._cache.get(observable.key, lambda: self._reputations.lookup(observable.value))
