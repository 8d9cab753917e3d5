"""Composes the scorer: Graph client → batcher → cache → handler → consumer on `indicators/scorer`."""

from __future__ import annotations

import contextlib
import math

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.contracts import Reputation
from tibridge.common.http import RateLimiter, ResilientSender, RetryPolicy, async_client
from tibridge.common.identity import build_credential
from tibridge.common.runtime import Service
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.scorer.batcher import LookupBatcher
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.counts import ScorerCounts
from tibridge.scorer.policy import Policy
from tibridge.scorer.reputation import MAX_BATCH_ITEMS, BearerTokenAuth, GraphReputationClient
from tibridge.scorer.service import ScorerHandler
from tibridge.scorer.settings import ScorerSettings


def batch_size_for(lookups_per_second: float) -> int:
    """Every item of a batch counts against the ceiling, so a batch never holds more than one second's worth."""
    return max(1, min(MAX_BATCH_ITEMS, math.floor(lookups_per_second)))


async def build(settings: ScorerSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    counts = ScorerCounts()
    credential = build_credential(settings.credential, settings.graph_base_url)
    resources.push_async_callback(credential.close)
    http = async_client(settings.graph_base_url, timeout_seconds=settings.graph_request_timeout_seconds)
    http.auth = BearerTokenAuth(credential, clock)
    resources.push_async_callback(http.aclose)

    batch_size = batch_size_for(settings.graph_lookups_per_second)
    limiter = RateLimiter(settings.graph_lookups_per_second, burst=batch_size, clock=clock)
    retry = RetryPolicy(
        max_attempts=settings.graph_max_attempts, base_delay_seconds=settings.graph_retry_base_delay_seconds
    )
    client = GraphReputationClient(http, ResilientSender("graph", retry, limiter, clock), counts)
    batcher = LookupBatcher(
        client,
        limiter,
        retry,
        clock=clock,
        counts=counts,
        linger_seconds=settings.graph_batch_linger_seconds,
        batch_size=batch_size,
        parallel_requests=settings.graph_parallel_requests,
    )
    resources.push_async_callback(batcher.close)

    policy = Policy(
        threshold=settings.score_threshold,
        allowed_classifications=settings.allowed_classifications,
        unscorable=settings.unscorable_policy,
        unscorable_confidence=settings.unscorable_confidence,
    )
    cache: SingleFlightCache[Reputation | None] = SingleFlightCache(
        max_entries=settings.cache_max_entries, ttl_seconds=settings.cache_ttl_seconds, clock=clock, counts=counts
    )
    handler = ScorerHandler(bus, policy, cache, batcher, clock, counts)
    consumer = Consumer(
        bus,
        INDICATORS_TOPIC,
        SCORER_SUBSCRIPTION,
        handler,
        ConsumerOptions(
            max_in_flight=settings.max_in_flight,
            max_concurrency=settings.max_concurrency,
            prefetch=settings.servicebus_prefetch,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            probe_interval_seconds=settings.graph_probe_interval_seconds,
        ),
        clock,
    )
    # Not ready while Graph refuses us: the runtime reports a paused consumer's reason on /readyz.
    return Service(workers=[consumer], counts=counts.snapshot)
