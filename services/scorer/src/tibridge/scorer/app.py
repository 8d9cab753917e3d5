"""The scorer's composition: settings → Graph client, rate limiter and batcher (`build`) → cache, handler and
the consumer on `indicators/scorer` (`assemble`, also the tests' seam); `SPEC` is what a process needs to run it."""

from __future__ import annotations

import contextlib
import math

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.contracts import Reputation
from tibridge.common.http import RateLimiter, ResilientSender, RetryPolicy, async_client
from tibridge.common.identity import build_credential
from tibridge.common.metrics import Tally
from tibridge.common.producer import Producer
from tibridge.common.runtime import Service, ServiceName, ServiceSpec
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.graph_batches import GraphBatcher
from tibridge.scorer.handler import Reputations, ScorerCounts, ScorerHandler
from tibridge.scorer.reputation import MAX_BATCH_ITEMS, BearerTokenAuth, GraphReputationClient
from tibridge.scorer.settings import ScorerSettings

# Lookups received at once: more than a Graph batch, so batches fill from one receive.
RECEIVE_BATCH = 32


def batch_size_for(lookups_per_second: float) -> int:
    """Every item of a batch counts against the ceiling, so a batch never holds more than one second's worth."""
    return max(1, min(MAX_BATCH_ITEMS, math.floor(lookups_per_second)))


def consumer_options(settings: ScorerSettings) -> ConsumerOptions:
    return ConsumerOptions.of(
        settings,
        max_in_flight=settings.scorer.max_in_flight,
        max_concurrency=settings.scorer.max_concurrency,
        receive_batch=RECEIVE_BATCH,
        probe_interval_seconds=settings.graph.probe_interval_seconds,
    )


async def build(settings: ScorerSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    graph = settings.graph
    credential = build_credential(settings.credential, graph.base_url)
    resources.push_async_callback(credential.close)
    http = async_client(graph.base_url, timeout_seconds=graph.request_timeout_seconds)
    http.auth = BearerTokenAuth(credential, clock)
    resources.push_async_callback(http.aclose)

    batch_size = batch_size_for(graph.lookups_per_second)
    limiter = RateLimiter(graph.lookups_per_second, burst=batch_size, clock=clock)
    retry = RetryPolicy(max_attempts=graph.max_attempts, base_delay_seconds=graph.retry_base_delay_seconds)
    client = GraphReputationClient(http, ResilientSender("graph", retry, limiter, clock))
    batcher = GraphBatcher(
        client,
        limiter,
        retry,
        clock=clock,
        linger_seconds=graph.batch_linger_seconds,
        batch_size=batch_size,
        parallel_requests=graph.parallel_requests,
    )
    resources.push_async_callback(batcher.close)
    return assemble(settings, bus, clock, consumer_options(settings), reputations=batcher)


def assemble(
    settings: ScorerSettings, bus: Bus, clock: Clock, consumer: ConsumerOptions, *, reputations: Reputations
) -> Service:
    """The service once its reputation source exists: the handler behind a cache, in the consumer on
    `indicators/scorer`. Not ready while Graph refuses us: the runtime reports a paused consumer's reason."""
    rules = settings.scorer
    cache: SingleFlightCache[Reputation | None] = SingleFlightCache(
        max_entries=rules.cache_max_entries,
        ttl_seconds=rules.cache_ttl_seconds,
        clock=clock,
        lookups=Tally("tibridge.scorer.lookups", "Reputation lookups, by cache outcome"),
    )
    handler = ScorerHandler(Producer(bus, clock), rules, cache, reputations)
    worker = Consumer(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION, handler, consumer, clock)

    def counts() -> ScorerCounts:
        return ScorerCounts(
            verdicts=handler.verdicts(),
            classifications=handler.classifications(),
            cache=cache.counts(),
            graph=reputations.counts(),
            settled=worker.counts(),
        )

    return Service(workers=[worker], counts=counts)


SPEC = ServiceSpec(ServiceName.SCORER, ScorerSettings, build)
