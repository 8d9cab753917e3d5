"""Composes the publisher: ThreatStream client (or dry run) → publisher → consumer on `scored/publisher`."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, ConsumerOptions
from tibridge.common.http import RateLimiter, ResilientSender, RetryPolicy, async_client
from tibridge.common.runtime import Service
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.mapping import MappingPolicy
from tibridge.publisher.payloads import WireOptions
from tibridge.publisher.service import Publisher, PublisherOptions
from tibridge.publisher.settings import PublisherSettings
from tibridge.publisher.threatstream import DryRun, Gateway, ThreatStreamClient

# Receiving in bigger bites than the consumer's default lets a batch of a thousand fill quickly.
RECEIVE_BATCH = 100


def publisher_options(settings: PublisherSettings) -> PublisherOptions:
    return PublisherOptions(
        mode=settings.threatstream_mode,
        batch_size=settings.threatstream_batch_size,
        batch_age_seconds=settings.threatstream_batch_age_seconds,
        mapping=MappingPolicy(
            default_lifetime=timedelta(days=settings.threatstream_default_lifetime_days),
            source_name=settings.threatstream_source_name,
        ),
        wire=WireOptions(
            classification=str(settings.threatstream_classification),
            default_state="active" if settings.threatstream_auto_approve else "inactive",
        ),
        probe_interval_seconds=settings.threatstream_probe_interval_seconds,
        session_expiry_days=settings.threatstream_session_expiry_days,
    )


def gateway_for(settings: PublisherSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> Gateway:
    if settings.threatstream_dry_run_file is not None:
        return DryRun(settings.threatstream_dry_run_file)
    if settings.threatstream_api_key is None:
        raise ValueError("TIBRIDGE_THREATSTREAM_API_KEY is required unless TIBRIDGE_THREATSTREAM_DRY_RUN_FILE is set")
    http = async_client(settings.threatstream_base_url, timeout_seconds=settings.threatstream_timeout_seconds)
    resources.push_async_callback(http.aclose)
    rate = settings.threatstream_rate_per_second
    sender = ResilientSender(
        "threatstream",
        RetryPolicy(max_attempts=settings.threatstream_max_attempts),
        RateLimiter(rate, burst=max(1.0, rate), clock=clock),
        clock,
    )
    return ThreatStreamClient(http, settings.threatstream_username, settings.threatstream_api_key, sender)


def consumer_options(settings: PublisherSettings) -> ConsumerOptions:
    return ConsumerOptions(
        max_in_flight=settings.max_in_flight,
        receive_batch=min(RECEIVE_BATCH, settings.threatstream_batch_size),
        prefetch=settings.servicebus_prefetch,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        probe_interval_seconds=settings.threatstream_probe_interval_seconds,
    )


def assemble(bus: Bus, gateway: Gateway, options: PublisherOptions, consumer: ConsumerOptions, clock: Clock) -> Service:
    """The service's parts once its adapters exist: the consumer on `scored/publisher` and the delivery loop."""
    publisher = Publisher(gateway, options, clock)
    return Service(
        workers=[Consumer(bus, SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, publisher, consumer, clock), publisher],
        readiness=[publisher.readiness],
        counts=publisher.count_summary,
    )


async def build(settings: PublisherSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    gateway = gateway_for(settings, resources, clock)
    return assemble(bus, gateway, publisher_options(settings), consumer_options(settings), clock)
