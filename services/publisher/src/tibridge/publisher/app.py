"""The publisher's composition: settings → the ThreatStream client or the dry run (`build`) → the worker that
batches, delivers and settles, behind the consumer on `scored/publisher` (`assemble`, also the tests' seam);
`SPEC` is what a process needs to run it."""

from __future__ import annotations

import contextlib

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.http import HTTP_TRANSIENT, async_client
from tibridge.common.pacing import Engine, PaceLimits, Pacer, RetryPolicy
from tibridge.common.runtime import Service, ServiceName, ServiceSpec
from tibridge.common.topology import INDICATORS_TOPIC, PUBLISHER_SUBSCRIPTION, SCORED_TOPIC, SCORER_SUBSCRIPTION
from tibridge.publisher.settings import PublisherSettings, ThreatStreamSettings
from tibridge.publisher.threatstream import DryRun, Gateway, ThreatStreamClient
from tibridge.publisher.worker import Publisher

# Receiving in bigger bites than the scorer does lets a batch of a thousand fill quickly.
RECEIVE_BATCH = 100
# The worker only adds a message to a batch; a few at once keep up with any receive rate.
MAX_CONCURRENCY = 16
# Nothing arrived for this long (s), and the scorer's subscription is empty: what the upstream produced is all here.
# The consumer keeps receiving meanwhile, so a message on its way lands well within it; one the check misses only
# goes in the next batch. The scorer's subscription is asked at most once per receive wait.
QUIET_SECONDS = 0.25
# The pacer never goes below this (requests per second): ThreatStream's Retry-After already spaces requests.
MIN_REQUESTS_PER_SECOND = 0.5


def consumer_options(settings: PublisherSettings) -> ConsumerOptions:
    return ConsumerOptions.of(
        settings,
        max_in_flight=settings.publisher.max_in_flight,
        max_concurrency=MAX_CONCURRENCY,
        receive_batch=min(RECEIVE_BATCH, settings.publisher.batch_size),
        probe_interval_seconds=settings.threatstream.probe_interval_seconds,
    )


def pace_limits(threatstream: ThreatStreamSettings) -> PaceLimits:
    """Where the ThreatStream pacer starts and its limits. ThreatStream publishes no ceiling, so the rate adapts;
    `TIBRIDGE_THREATSTREAM_RATE_PER_SECOND` is a hard cap when set. The delivery loop sends one request at a time,
    so the limit on requests in flight never binds here."""
    cap = threatstream.rate_per_second
    initial = threatstream.initial_rate_per_second if cap is None else min(threatstream.initial_rate_per_second, cap)
    return PaceLimits(initial_rate=initial, max_rate=cap, min_rate=min(initial, MIN_REQUESTS_PER_SECOND))


def threatstream_engine(threatstream: ThreatStreamSettings, clock: Clock) -> Engine:
    """The one rate-and-retry engine of this process's ThreatStream requests: one pacer, one budget per request."""
    return Engine(
        "threatstream",
        Pacer("threatstream", pace_limits(threatstream), clock),
        RetryPolicy(max_attempts=threatstream.max_attempts, base_delay_seconds=threatstream.retry_base_delay_seconds),
        clock,
        transient=HTTP_TRANSIENT,
    )


def gateway_for(settings: PublisherSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> Gateway:
    """The client seam: every ThreatStream request goes through the process's rate-and-retry engine here."""
    if settings.publisher.dry_run_file is not None:
        return DryRun(settings.publisher.dry_run_file)
    threatstream = settings.threatstream
    if threatstream.api_key is None:
        raise ValueError("TIBRIDGE_THREATSTREAM_API_KEY is required unless TIBRIDGE_PUBLISHER_DRY_RUN_FILE is set")
    # httpx retries nothing by itself (its transport's retries stay 0): the engine's budget is the only one.
    http = async_client(threatstream.base_url, timeout_seconds=threatstream.timeout_seconds)
    resources.push_async_callback(http.aclose)
    engine = threatstream_engine(threatstream, clock)
    return ThreatStreamClient(http, threatstream.username, threatstream.api_key, engine)


async def build(settings: PublisherSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    return assemble(settings, bus, clock, consumer_options(settings), gateway=gateway_for(settings, resources, clock))


def assemble(
    settings: PublisherSettings, bus: Bus, clock: Clock, consumer: ConsumerOptions, *, gateway: Gateway
) -> Service:
    """The service once its gateway exists: the consumer on `scored/publisher`, which hands every message to the
    worker to hold, and the worker's delivery loop; not ready while ThreatStream refuses us or lacks a permission.
    The upstream is idle when the scorer's subscription is empty (its outputs are on `scored` before it
    completes its inputs)."""

    async def upstream_busy() -> bool:
        return await bus.has_pending(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)

    publisher = Publisher(
        gateway,
        settings.publisher,
        clock,
        probe_interval_seconds=settings.threatstream.probe_interval_seconds,
        quiet_seconds=min(QUIET_SECONDS, consumer.receive_wait_seconds),
        upstream_check_seconds=consumer.receive_wait_seconds,
        upstream_busy=upstream_busy,
    )
    return Service(
        workers=[Consumer(bus, SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, publisher, consumer, clock), publisher],
        readiness=[publisher.readiness],
        counts=publisher.counts,
    )


SPEC = ServiceSpec(ServiceName.PUBLISHER, PublisherSettings, build)
