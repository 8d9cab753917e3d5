"""The scorer's composition: settings → Graph client, its pacing engine and the batcher (`build`) → cache, handler
and the consumer on `indicators/scorer` (`assemble`, also the tests' seam); `SPEC` is what a process needs to run
it."""

from __future__ import annotations

import contextlib
import math

import httpx

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.contracts import Reputation
from tibridge.common.http import HTTP_TRANSIENT, async_client
from tibridge.common.identity import build_credential
from tibridge.common.metrics import Tally
from tibridge.common.pacing import Engine, PaceLimits, Pacer, RetryPolicy
from tibridge.common.producer import Producer
from tibridge.common.runtime import Service, ServiceName, ServiceSpec
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.graph_batches import GraphBatcher
from tibridge.scorer.handler import Reputations, ScorerCounts, ScorerHandler
from tibridge.scorer.reputation import MAX_BATCH_ITEMS, BearerTokenAuth, GraphReputationClient
from tibridge.scorer.settings import GraphSettings, LookupMode, ScorerSettings

# Lookups received at once: more than a Graph batch, so batches fill from one receive.
RECEIVE_BATCH = 32


# Requests in flight at start: the pacer adds more while latency, not Graph's ceiling, holds lookups back.
INITIAL_PARALLEL_REQUESTS = 4


def pace_limits(graph: GraphSettings) -> PaceLimits:
    """Where the Graph pacer starts (in lookups per second) and its limits. It never goes below one full request
    per second: Graph's Retry-After already spaces requests that far, and a storm of 429s that has nothing to do
    with our rate must not starve the lookups."""
    initial = graph.initial_lookups_per_second
    if graph.max_lookups_per_second is not None:
        initial = min(initial, graph.max_lookups_per_second)
    return PaceLimits(
        initial_rate=initial,
        max_rate=graph.max_lookups_per_second,
        min_rate=min(initial, float(batch_size_for(graph))),
        initial_parallel=min(INITIAL_PARALLEL_REQUESTS, graph.max_parallel_requests),
        max_parallel=graph.max_parallel_requests,
    )


def batch_size_for(graph: GraphSettings) -> int:
    """Lookups per request: 20 in a `$batch`, one per GET. Every item of a batch counts against Graph's
    ceiling, so under a hard cap a batch never holds more than one second's worth."""
    largest = MAX_BATCH_ITEMS if graph.lookup_mode is LookupMode.BATCH else 1
    cap = graph.max_lookups_per_second
    return max(1, min(largest, math.floor(cap) if cap is not None else largest))


def consumer_options(settings: ScorerSettings) -> ConsumerOptions:
    return ConsumerOptions.of(
        settings,
        max_in_flight=settings.scorer.max_in_flight,
        max_concurrency=settings.scorer.max_concurrency,
        receive_batch=RECEIVE_BATCH,
        probe_interval_seconds=settings.graph.probe_interval_seconds,
    )


async def build(settings: ScorerSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    reputations = graph_reputations(settings, resources, clock)
    return assemble(settings, bus, clock, consumer_options(settings), reputations=reputations)


def graph_reputations(settings: ScorerSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> GraphBatcher:
    """Graph as the scorer's reputation source: the client, its pacing engine and the batcher on them."""
    graph = settings.graph
    http = graph_http(settings, resources, clock)
    engine = Engine(
        "graph",
        Pacer("graph", pace_limits(graph), clock),
        RetryPolicy(max_attempts=graph.max_attempts, base_delay_seconds=graph.retry_base_delay_seconds),
        clock,
        transient=HTTP_TRANSIENT,
    )
    batcher = GraphBatcher(
        GraphReputationClient(http, graph.lookup_mode),
        engine,
        clock=clock,
        linger_seconds=graph.batch_linger_seconds if graph.lookup_mode is LookupMode.BATCH else 0.0,
        batch_size=batch_size_for(graph),
        refusal_after_server_errors=graph.refusal_after_server_errors,
    )
    resources.push_async_callback(batcher.close)
    return batcher


def graph_http(settings: ScorerSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> httpx.AsyncClient:
    """The HTTP client for Graph with the scorer's identity's bearer token (also what `tibridge preflight` uses)."""
    graph = settings.graph
    credential = build_credential(settings.credential, graph.base_url)
    resources.push_async_callback(credential.close)
    http = async_client(graph.base_url, timeout_seconds=graph.request_timeout_seconds)
    http.auth = BearerTokenAuth(credential, clock)
    resources.push_async_callback(http.aclose)
    return http


def assemble(
    settings: ScorerSettings, bus: Bus, clock: Clock, consumer: ConsumerOptions, *, reputations: Reputations
) -> Service:
    """The service once its reputation source exists: the handler behind a cache, in the consumer on
    `indicators/scorer`. Not ready while Graph refuses us: the runtime reports a paused consumer's reason (with
    Graph's own message)."""
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
