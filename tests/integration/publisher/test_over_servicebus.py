"""10,000 scored messages over the wire-level Service Bus double, through the publisher, into the sandbox."""

from __future__ import annotations

import contextlib
import math
from datetime import timedelta

from tests.fixtures.publisher import (
    mixed_indicators,
    publish_scored,
    running,
    sandbox_objects,
    sandbox_settings,
    sandbox_stats,
    scored_indicator,
)
from tests.fixtures.runtime import eventually
from tests.fixtures.sandbox import SandboxFactory
from tests.sbdouble import ServiceBusDouble
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import Verdict
from tibridge.common.runtime import Service
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.app import build
from tibridge.publisher.worker import PublisherCounts

MESSAGES = 3_000
BATCH_SIZE = 1000
REPLICATED = 600


async def test_thousands_of_messages_over_service_bus_reach_threatstream_in_full_batches(
    sb_double: ServiceBusDouble, sandbox_factory: SandboxFactory
) -> None:
    indicators = mixed_indicators(MESSAGES)
    producer = ServiceBusBus.from_connection_string(sb_double.connection_string)
    try:
        await publish_scored(producer, indicators)
    finally:
        await producer.close()
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
    async with sandbox_factory(indicators=0) as server, contextlib.AsyncExitStack() as resources:
        resources.push_async_callback(bus.close)
        settings = sandbox_settings(
            server,
            bus="servicebus",
            servicebus_connection_string=sb_double.connection_string,
            publisher_mode="direct",
        )
        service = await build(settings, bus, resources, SystemClock())
        async with running(service):
            await eventually(
                lambda: service.snapshot(PublisherCounts).completed == MESSAGES,
                within=240,
                what="every message completed",
            )
        stats = (await sandbox_stats(server))["threatstream"]
        held = await sandbox_objects(server)
    assert sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) == 0
    assert sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) == 0
    batches = math.ceil(MESSAGES / BATCH_SIZE)
    # An upsert per batch and a read after each to confirm what it took; a read of what is ours (and, once, of the
    # whitelist) while the first batch gathered, and again before a later batch only if that read has gone stale.
    requests = stats["requests"]
    assert set(requests) <= {"upsert", "search", "orgwhitelist"}
    assert requests["upsert"] == batches
    assert batches + 1 <= requests["search"] <= 2 * batches
    assert requests.get("orgwhitelist", 0) <= 1
    assert stats["batch_sizes"] == {str(BATCH_SIZE): batches}
    assert (stats["objects"], stats["active"], stats["duplicates_created"]) == (MESSAGES, MESSAGES, 0)
    assert {obj["value"] for obj in held} == {indicator.observable.value for indicator in indicators}


async def test_two_replicas_over_service_bus_expire_only_what_tibridge_published(
    sb_double: ServiceBusDouble, sandbox_factory: SandboxFactory
) -> None:
    """Approval mode (auto-approved), then every observable revoked upstream and half of the revocations
    repeated (a second upstream revision), taken by two publisher processes' worth of clients at once."""
    indicators = mixed_indicators(REPLICATED)
    revocations = [
        scored_indicator(
            one.observable,
            None,
            verdict=Verdict.EXPIRE,
            time_generated=one.indicator.time_generated + timedelta(days=days),
            upstream_version=f"{one.indicator.upstream_version}-revoked-{days}",
        )
        for days in (7, 8)
        for one in (indicators if days == 7 else indicators[: REPLICATED // 2])
    ]
    producer = ServiceBusBus.from_connection_string(sb_double.connection_string)
    try:
        await publish_scored(producer, indicators)
    finally:
        await producer.close()
    async with sandbox_factory(indicators=0) as server, contextlib.AsyncExitStack() as resources:
        values = {
            "bus": "servicebus",
            "servicebus_connection_string": sb_double.connection_string,
            "publisher_mode": "approval",
            "publisher_auto_approve": True,
            "publisher_batch_size": 100,
            "publisher_max_in_flight": 200,
        }

        async def replica() -> Service:
            bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
            resources.push_async_callback(bus.close)
            return await build(sandbox_settings(server, **values), bus, resources, SystemClock())

        first = await replica()
        async with running(first):
            await eventually(lambda: sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) == 0, within=120)
        producer = ServiceBusBus.from_connection_string(sb_double.connection_string)
        try:
            await publish_scored(producer, revocations)
        finally:
            await producer.close()
        replicas = [await replica(), await replica()]
        async with running(replicas[0]), running(replicas[1]):
            await eventually(
                lambda: sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) == 0,
                within=120,
                what="the replicas settled every revocation",
            )
        stats = (await sandbox_stats(server))["threatstream"]
        held = await sandbox_objects(server)
    assert sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) == 0
    assert {obj["value"] for obj in held} == {one.observable.value for one in indicators}
    assert {obj["status"] for obj in held} == {"inactive"}
    assert (stats["created"], stats["created_inactive"], stats["duplicates_created"]) == (REPLICATED, 0, 0)
    assert REPLICATED <= stats["requests"]["patch_by_id"] <= len(revocations)
    assert sum(replica.snapshot(PublisherCounts).completed for replica in replicas) == len(revocations)
