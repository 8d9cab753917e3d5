"""The publisher's composition: settings → the ThreatStream client or the dry run (`build`) → the worker that
batches, sends and settles, behind the consumer on `scored/publisher` (`assemble`, also the tests' seam);
`SPEC` is what a process needs to run it."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.http import RateLimiter, ResilientSender, RetryPolicy, async_client
from tibridge.common.runtime import Service, ServiceName, ServiceSpec
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.mapping import IntelStatus, MappingPolicy
from tibridge.publisher.payloads import WireOptions
from tibridge.publisher.settings import PublisherSettings, PublishingSettings, ThreatStreamSettings
from tibridge.publisher.threatstream import DryRun, Gateway, ThreatStreamClient
from tibridge.publisher.worker import Publisher, PublisherOptions

# Receiving in bigger bites than the scorer does lets a batch of a thousand fill quickly.
RECEIVE_BATCH = 100
# The worker only adds a message to a batch; a few at once keep up with any receive rate.
MAX_CONCURRENCY = 16


def publisher_options(publishing: PublishingSettings, threatstream: ThreatStreamSettings) -> PublisherOptions:
    return PublisherOptions(
        mode=publishing.mode,
        batch_size=publishing.batch_size,
        batch_age_seconds=publishing.batch_age_seconds,
        mapping=MappingPolicy(
            default_lifetime=timedelta(days=publishing.default_lifetime_days), source_name=publishing.source_name
        ),
        wire=WireOptions(
            classification=publishing.classification,
            default_state=IntelStatus.ACTIVE if publishing.auto_approve else IntelStatus.INACTIVE,
        ),
        probe_interval_seconds=threatstream.probe_interval_seconds,
        session_expiry_days=publishing.session_expiry_days,
    )


def consumer_options(settings: PublisherSettings) -> ConsumerOptions:
    return ConsumerOptions.of(
        settings,
        max_in_flight=settings.publisher.max_in_flight,
        max_concurrency=MAX_CONCURRENCY,
        receive_batch=min(RECEIVE_BATCH, settings.publisher.batch_size),
        probe_interval_seconds=settings.threatstream.probe_interval_seconds,
    )


def gateway_for(settings: PublisherSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> Gateway:
    if settings.publisher.dry_run_file is not None:
        return DryRun(settings.publisher.dry_run_file)
    threatstream = settings.threatstream
    if threatstream.api_key is None:
        raise ValueError("TIBRIDGE_THREATSTREAM_API_KEY is required unless TIBRIDGE_PUBLISHER_DRY_RUN_FILE is set")
    http = async_client(threatstream.base_url, timeout_seconds=threatstream.timeout_seconds)
    resources.push_async_callback(http.aclose)
    rate = threatstream.rate_per_second
    sender = ResilientSender(
        "threatstream",
        RetryPolicy(max_attempts=threatstream.max_attempts, base_delay_seconds=threatstream.retry_base_delay_seconds),
        RateLimiter(rate, burst=max(1.0, rate), clock=clock),
        clock,
    )
    return ThreatStreamClient(http, threatstream.username, threatstream.api_key, sender)


async def build(settings: PublisherSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    return assemble(settings, bus, clock, consumer_options(settings), gateway=gateway_for(settings, resources, clock))


def assemble(
    settings: PublisherSettings, bus: Bus, clock: Clock, consumer: ConsumerOptions, *, gateway: Gateway
) -> Service:
    """The service once its gateway exists: the consumer on `scored/publisher`, which hands every message to the
    worker to hold, and the worker's delivery loop; not ready while ThreatStream refuses us."""
    publisher = Publisher(gateway, publisher_options(settings.publisher, settings.threatstream), clock)
    return Service(
        workers=[Consumer(bus, SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, publisher, consumer, clock), publisher],
        readiness=[publisher.readiness],
        counts=publisher.counts,
    )


SPEC = ServiceSpec(ServiceName.PUBLISHER, PublisherSettings, build)
