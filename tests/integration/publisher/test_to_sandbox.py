"""Scored messages through the publisher into the sandbox's ThreatStream, in both modes, every field checked.

The ten-thousand-message run over the wire-level Service Bus double is `test_over_servicebus`.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import pytest

from tests.fixtures.publisher import (
    MIXED_SESSIONS_PER_BATCH,
    MIXED_VALID_UNTIL,
    depth,
    mixed_indicators,
    publish_scored,
    running,
    sandbox_objects,
    sandbox_settings,
    sandbox_stats,
)
from tests.fixtures.runtime import eventually
from tests.fixtures.sandbox import SandboxFactory
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import Classification, IndicatorScored, ObservableType
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.app import build
from tibridge.publisher.worker import REJECTED_REASON, PublisherCounts

MESSAGES = 3000
BATCH_SIZE = 1000
ITYPE_SUFFIX = {
    ObservableType.IPV4: "ip",
    ObservableType.IPV6: "ipv6",
    ObservableType.DOMAIN: "domain",
    ObservableType.URL: "url",
    ObservableType.FILE_HASH: "md5",
    ObservableType.EMAIL: "email",
}


def expected_object(indicator: IndicatorScored, *, approval: bool) -> dict[str, Any]:
    """The fields ThreatStream must hold for one published indicator, written out from the mapping rules."""
    reputation = indicator.reputation
    suspicious = reputation is not None and reputation.classification is Classification.SUSPICIOUS
    confidence = reputation.score if reputation else 100
    # Approval mode rounds expiries up to whole weeks since the epoch (Thursdays, 00:00 UTC).
    expiry = "2027-05-27T00:00:00Z" if approval else "2027-05-20T15:30:00Z"
    return {
        "itype": ("suspicious_" if suspicious else "mal_") + ITYPE_SUFFIX[indicator.observable.type],
        "status": "active",
        "classification": "private",
        "confidence": confidence - confidence % 5 if approval else confidence,
        "severity": "medium" if suspicious else "very-high",
        "threat_type": "suspicious" if suspicious else "malware",
        "first_tag": {"name": "mdti", "tlp": str(indicator.indicator.tlp)},
        "expiration_ts": expiry if indicator.indicator.valid_until == MIXED_VALID_UNTIL else None,
    }


def held_fields(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "itype": obj["itype"],
        "status": obj["status"],
        "classification": obj["classification"],
        "confidence": obj["confidence"],
        "severity": obj["severity"],
        "threat_type": obj["threat_type"],
        "first_tag": obj["tags"][0],
        # Indicators without ValidUntil expire after the default lifetime: only its day is predictable.
        "expiration_ts": obj["expiration_ts"] if obj["expiration_ts"].startswith("2027-05-2") else None,
    }


@pytest.mark.parametrize("mode", ["direct", "approval"])
async def test_messages_reach_threatstream_in_batches_with_every_field(
    sandbox_factory: SandboxFactory, mode: str
) -> None:
    indicators = mixed_indicators(MESSAGES)
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    async with sandbox_factory(indicators=0) as server, contextlib.AsyncExitStack() as resources:
        settings = sandbox_settings(
            server, publisher_mode=mode, publisher_auto_approve=True, publisher_batch_age_seconds=30
        )
        service = await build(settings, bus, resources, SystemClock())
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=120, what="every message settled")
        stats = (await sandbox_stats(server))["threatstream"]
        held = {obj["value"]: obj for obj in await sandbox_objects(server)}

    batches = math.ceil(MESSAGES / BATCH_SIZE)
    if mode == "direct":
        assert stats["requests"] == {"upsert": batches}
        assert stats["batch_sizes"] == {str(BATCH_SIZE): batches}
    else:
        # Each batch holds every combination of what an import session states, so each needs a session apiece.
        assert stats["requests"] == {"import": batches * MIXED_SESSIONS_PER_BATCH}
    assert (stats["objects"], stats["duplicates_created"], stats["ignored"]) == (MESSAGES, 0, 0)
    assert depth(bus, dead_letter=True) == 0
    assert set(held) == {indicator.observable.value for indicator in indicators}
    approval = mode == "approval"
    mismatched = [
        (one.observable.value, held_fields(held[one.observable.value]), expected_object(one, approval=approval))
        for one in indicators
        if held_fields(held[one.observable.value]) != expected_object(one, approval=approval)
    ]
    assert mismatched == []
    assert service.snapshot(PublisherCounts).completed == MESSAGES


async def test_one_poison_item_in_a_thousand_is_dead_lettered_and_the_rest_delivered(
    sandbox_factory: SandboxFactory,
) -> None:
    indicators = mixed_indicators(BATCH_SIZE)
    poison = indicators[613].observable.value
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    faults = {"threatstream": {"reject_values": "^" + re.escape(poison) + "$"}}
    async with sandbox_factory(indicators=0, faults=faults) as server, contextlib.AsyncExitStack() as resources:
        settings = sandbox_settings(server, publisher_mode="direct", publisher_batch_age_seconds=30)
        service = await build(settings, bus, resources, SystemClock())
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=60, what="every message settled")
        stats = (await sandbox_stats(server))["threatstream"]
        held = {obj["value"] for obj in await sandbox_objects(server)}
    extra_requests = stats["requests"]["upsert"] - 1
    assert extra_requests <= 2 * math.ceil(math.log2(BATCH_SIZE))
    assert held == {indicator.observable.value for indicator in indicators} - {poison}
    async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as dead_letters:
        (dead,) = await dead_letters.receive(10, 0.5)
    assert dead.dead_letter_reason == REJECTED_REASON
    assert dead.dead_letter_description == f"ThreatStream answered 400: objects: {poison!r} is not accepted."
    counts = service.snapshot(PublisherCounts)
    assert (counts.completed, counts.dead_lettered) == (BATCH_SIZE - 1, 1)
