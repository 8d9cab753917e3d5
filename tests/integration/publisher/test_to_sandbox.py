"""Scored messages through the publisher (on the in-memory bus) into the sandbox's strict ThreatStream, in both
modes: every field, the ownership-scoped lifecycle, several replicas, missing permissions and refusals.

The ten-thousand-message run over the wire-level Service Bus double is `test_over_servicebus`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.fixtures.publisher import (
    INDICATOR_TIME,
    MIXED_SESSIONS_PER_BATCH,
    MIXED_VALID_UNTIL,
    depth,
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
from tibridge.cli.dlq import replay_id
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import (
    Classification,
    HashAlgorithm,
    IndicatorScored,
    Observable,
    ObservableType,
    Verdict,
    application_properties,
    encode,
    envelope_for,
)
from tibridge.common.runtime import Service
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.app import build
from tibridge.publisher.mapping import SEVERITY_RANK, Severity, severity_for
from tibridge.publisher.sessions import WHITELISTED
from tibridge.publisher.worker import PERMISSION_REASON, REJECTED_REASON, PublisherCounts
from tibridge.sandbox import SandboxServer

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
HASHES = {"md5": HashAlgorithm.MD5, "sha1": HashAlgorithm.SHA1, "sha256": HashAlgorithm.SHA256}
KINDS = {"ip": ObservableType.IPV4, "ipv6": ObservableType.IPV6, "domain": ObservableType.DOMAIN}
KINDS |= {"url": ObservableType.URL, "email": ObservableType.EMAIL, "md5": ObservableType.FILE_HASH}
SUBTYPES = {"MD5": HashAlgorithm.MD5, "SHA1": HashAlgorithm.SHA1, "SHA256": HashAlgorithm.SHA256}
SUBTYPES |= {"SHA512": HashAlgorithm.SHA512}


@contextlib.asynccontextmanager
async def publisher_for(server: SandboxServer, bus: MemoryBus, **overrides: Any) -> AsyncIterator[Service]:
    async with contextlib.AsyncExitStack() as resources:
        settings = sandbox_settings(server, **overrides)
        yield await build(settings, bus, resources, SystemClock())


def counts(service: Service) -> PublisherCounts:
    return service.snapshot(PublisherCounts)


async def dead_letters(bus: MemoryBus) -> list[tuple[str | None, str | None]]:
    async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as receiver:
        messages = await receiver.receive(1000, 0.2)
        for message in messages:
            await receiver.abandon(message)  # left where it was, for whoever reads the queue next
    return [(message.dead_letter_reason, message.dead_letter_description) for message in messages]


def observable_of(obj: dict[str, Any]) -> Observable:
    return Observable(type=KINDS[obj["type"]], value=obj["value"], hash_algorithm=SUBTYPES.get(obj["subtype"]))


def expired(indicators: Sequence[IndicatorScored], *, later: timedelta = timedelta(days=7)) -> list[IndicatorScored]:
    """A newer revision of each indicator: revoked upstream."""
    return [
        scored_indicator(
            one.observable,
            None,
            verdict=Verdict.EXPIRE,
            time_generated=one.indicator.time_generated + later,
            upstream_version=f"{one.indicator.upstream_version}-revoked-{later.total_seconds():.0f}",
        )
        for one in indicators
    ]


# -- every field, both modes ----------------------------------------------------------------------------------------


def wanted(indicator: IndicatorScored) -> dict[str, Any]:
    reputation = indicator.reputation
    suspicious = reputation is not None and reputation.classification is Classification.SUSPICIOUS
    kind = indicator.observable.type
    graded = suspicious and kind is not ObservableType.IPV6
    return {
        "itype": ("suspicious_" if graded else "mal_") + ITYPE_SUFFIX[kind],
        "status": "active",
        "is_public": False,
        "threat_type": "suspicious" if graded else "malware",
        "first_tag": {"name": "tibridge", "tlp": str(indicator.indicator.tlp)},
    }


def held(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "itype": obj["itype"],
        "status": obj["status"],
        "is_public": obj["is_public"],
        "threat_type": obj["threat_type"],
        "first_tag": {key: obj["tags"][0][key] for key in ("name", "tlp")},
    }


@pytest.mark.parametrize("mode", ["direct", "approval"])
async def test_messages_reach_threatstream_in_batches_with_every_field(
    sandbox_factory: SandboxFactory, mode: str
) -> None:
    indicators = mixed_indicators(MESSAGES)
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    async with (
        sandbox_factory(indicators=0) as server,
        publisher_for(server, bus, publisher_mode=mode, publisher_auto_approve=True) as service,
    ):
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=120, what="every message settled")
        stats = (await sandbox_stats(server))["threatstream"]
        objects = {obj["value"]: obj for obj in await sandbox_objects(server)}

    batches = math.ceil(MESSAGES / BATCH_SIZE)
    if mode == "direct":
        assert stats["requests"]["upsert"] == batches
        assert stats["batch_sizes"] == {str(BATCH_SIZE): batches}
    else:
        # Each batch holds every profile an import session states, so each needs its sessions.
        assert stats["requests"]["import"] == batches * MIXED_SESSIONS_PER_BATCH
        assert stats["session_observables_rejected"] == 0
    # Besides: (direct) one read after each upsert to confirm it, and a read of what is ours while the first batch
    # gathered, again before a later batch only if the last read has gone stale.
    confirmations = batches if mode == "direct" else 0
    assert confirmations + 1 <= stats["requests"]["search"] <= confirmations + batches
    assert (stats["objects"], stats["duplicates_created"], stats["ignored"]) == (MESSAGES, 0, 0)
    assert depth(bus, dead_letter=True) == 0
    assert set(objects) == {indicator.observable.value for indicator in indicators}
    assert [one.observable.value for one in indicators if held(objects[one.observable.value]) != wanted(one)] == []
    for one in indicators:
        obj = objects[one.observable.value]
        own_confidence = one.reputation.score if one.reputation else 100
        own_expiry = one.indicator.valid_until
        expiry = datetime.fromisoformat(obj["expiration_ts"].replace("Z", "+00:00"))
        if mode == "direct":
            assert (obj["confidence"], obj["tlp"]) == (own_confidence, str(one.indicator.tlp))
            if own_expiry is not None:
                assert expiry == own_expiry
        else:
            # What an import session states is its observables' lowest: never overstated; the expiry never earlier.
            assert obj["confidence"] <= own_confidence
            rules = one.reputation.rules if one.reputation else ()
            own_severity = severity_for(own_confidence, rules)
            assert SEVERITY_RANK[Severity(obj["meta"]["severity"])] <= SEVERITY_RANK[own_severity]
            if own_expiry == MIXED_VALID_UNTIL:
                now = datetime.now(UTC)
                assert own_expiry <= expiry <= own_expiry + 0.5 * (own_expiry - now) + timedelta(minutes=1)
    assert counts(service).completed == MESSAGES


# -- the lifecycle touches only what tibridge published (issue 10 item 1) -------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "approval"])
async def test_publish_then_revoke_deactivates_ours_creates_nothing_and_leaves_every_foreign_entry(
    sandbox_factory: SandboxFactory, mode: str
) -> None:
    async with sandbox_factory(
        indicators=300, threatstream_foreign_share=1.0, threatstream_whitelist_share=0
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as control:
            foreign = (await control.get("/_sandbox/threatstream/objects?include=foreign")).json()["objects"]
        by_value = {obj["value"]: obj for obj in foreign}
        values = sorted(by_value)
        published = [scored_indicator(observable_of(by_value[value])) for value in values[: len(values) // 2]]
        never_published = [scored_indicator(observable_of(by_value[value])) for value in values[len(values) // 2 :]]
        bus = MemoryBus()
        async with (
            publisher_for(server, bus, publisher_mode=mode, publisher_auto_approve=True) as service,
            running(service),
        ):
            await publish_scored(bus, published)
            await eventually(lambda: depth(bus) == 0, within=60, what="the publications settled")
            await publish_scored(bus, [*expired(published), *expired(never_published)])
            await eventually(lambda: depth(bus) == 0, within=60, what="the revocations settled")
        stats = (await sandbox_stats(server))["threatstream"]
        ours = await sandbox_objects(server)
    assert {obj["value"] for obj in ours} == {one.observable.value for one in published}
    assert {obj["status"] for obj in ours} == {"inactive"}
    assert (stats["created"], stats["created_inactive"], stats["duplicates_created"]) == (len(published), 0, 0)
    assert stats["foreign"]["changed"] == []
    # One change by id per observable published and revoked; nothing for the others.
    assert stats["requests"]["patch_by_id"] == len(published)
    assert counts(service).skipped == {"nothing_of_ours_to_expire": len(never_published)}


async def test_several_replicas_expiring_the_same_observables_stay_correct(sandbox_factory: SandboxFactory) -> None:
    indicators = mixed_indicators(200)
    async with sandbox_factory(indicators=0) as server:
        bus = MemoryBus()
        await publish_scored(bus, indicators)
        async with publisher_for(server, bus, publisher_mode="direct") as first, running(first):
            await eventually(lambda: depth(bus) == 0, within=60)
        # Each observable revoked three times over (three upstream revisions, one after the other on the bus),
        # for three replicas that each hold a few messages at a time, so they take them side by side.
        waves = [expired(indicators, later=timedelta(days=days)) for days in (7, 8, 9)]
        revocations = [revision for revisions in zip(*waves, strict=True) for revision in revisions]
        await publish_scored(bus, revocations)
        small = {"publisher_mode": "direct", "publisher_batch_size": 10, "publisher_max_in_flight": 20}
        async with contextlib.AsyncExitStack() as replicas:
            services = [await replicas.enter_async_context(publisher_for(server, bus, **small)) for _ in range(3)]
            for service in services:
                await replicas.enter_async_context(running(service))
            await eventually(lambda: depth(bus) == 0, within=120, what="the replicas settled every revocation")
        stats = (await sandbox_stats(server))["threatstream"]
        ours = await sandbox_objects(server)
    assert len(ours) == len(indicators)
    assert {obj["status"] for obj in ours} == {"inactive"}
    assert (stats["created"], stats["created_inactive"], stats["duplicates_created"]) == (len(indicators), 0, 0)
    assert depth(bus, dead_letter=True) == 0
    # Replicas may race to deactivate one object (harmless, idempotent), but each changes it at most once.
    assert len(indicators) <= stats["requests"]["patch_by_id"] <= 3 * len(indicators)
    assert sum(counts(service).completed for service in services) == len(revocations)
    assert all(counts(service).completed for service in services), "every replica took its share"


# -- missing permissions (issue 10 item 2) --------------------------------------------------------------------------


async def grant(server: SandboxServer, *permissions: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as control:
        response = await control.post("/_sandbox/threatstream/permissions", json={"permissions": list(permissions)})
        response.raise_for_status()


async def test_expiries_without_approve_intel_are_kept_said_once_and_replayable(
    sandbox_factory: SandboxFactory,
) -> None:
    publications = mixed_indicators(30)
    async with sandbox_factory(indicators=0) as server:
        bus = MemoryBus()
        async with publisher_for(server, bus, publisher_mode="approval", publisher_auto_approve=True) as service:
            async with running(service):
                await publish_scored(bus, publications)
                await eventually(lambda: depth(bus) == 0, within=60)
                await grant(server, "import", "approve_import")  # the key loses 'Approve Intel'
                await publish_scored(bus, [*expired(publications[:10]), *mixed_indicators(40)[30:]])
                await eventually(lambda: depth(bus) == 0, within=60)
                readiness = await service.readiness[0]()
            missing = counts(service).missing_permissions
        letters = await dead_letters(bus)
        still_active = {obj["value"] for obj in await sandbox_objects(server) if obj["status"] == "active"}
        # Granted again, the dead letters go round once more (as `tibridge dlq replay publisher` sends them).
        await grant(server, "import", "approve_import", "approve_intel")
        async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as receiver:
            replay = await receiver.receive(100, 0.2)
            for message in replay:
                again_message = OutgoingMessage(
                    body=message.body,
                    message_id=replay_id(message),
                    application_properties=dict(message.application_properties),
                )
                await bus.publish(SCORED_TOPIC, [again_message])
                await receiver.complete(message)
        async with (
            publisher_for(server, bus, publisher_mode="approval", publisher_auto_approve=True) as again,
            running(again),
        ):
            await eventually(lambda: depth(bus) == 0, within=60)
        after = {obj["value"]: obj["status"] for obj in await sandbox_objects(server)}
    assert readiness is not None
    assert "lacks the 'Approve Intel' permission" in readiness
    assert PERMISSION_REASON in readiness
    assert missing == ("Approve Intel",)
    assert [reason for reason, _ in letters] == [PERMISSION_REASON] * 10
    assert {one.observable.value for one in publications[:10]} <= still_active  # nothing was lost meanwhile
    # New intelligence went on flowing into import sessions all the while.
    assert {one.observable.value for one in mixed_indicators(40)[30:]} <= still_active
    assert {after[one.observable.value] for one in publications[:10]} == {"inactive"}


# -- what ThreatStream refuses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "auto_approve"), [("direct", False), ("approval", False), ("approval", True)])
async def test_a_whitelisted_value_is_dead_lettered_with_threatstreams_reason(
    sandbox_factory: SandboxFactory, mode: str, auto_approve: bool
) -> None:
    indicators = mixed_indicators(60)
    refused = indicators[17].observable.value
    config = {"indicators": 0, "threatstream_whitelist": (refused,)}
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    async with (
        sandbox_factory(**config) as server,
        publisher_for(server, bus, publisher_mode=mode, publisher_auto_approve=auto_approve) as service,
    ):
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=60)
        values = {obj["value"] for obj in await sandbox_objects(server)}
        stats = (await sandbox_stats(server))["threatstream"]
    ((reason, description),) = await dead_letters(bus)
    assert reason == REJECTED_REASON
    assert description is not None
    assert "whitelist" in description
    assert refused not in values
    tally = counts(service)
    assert (tally.rejected, tally.completed) == (1, len(indicators) - 1)
    if mode == "approval":
        assert description == WHITELISTED
        assert (tally.sessions_opened, tally.session_observables_rejected) == (stats["import_sessions"], 1)
        assert set(tally.sessions_by_status) == {"approved" if auto_approve else "done"}


async def test_one_poison_item_in_a_thousand_is_dead_lettered_and_the_rest_delivered(
    sandbox_factory: SandboxFactory,
) -> None:
    indicators = mixed_indicators(BATCH_SIZE)
    poison = indicators[613].observable.value
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    faults = {"threatstream": {"reject_values": "^" + re.escape(poison) + "$"}}
    async with (
        sandbox_factory(indicators=0, faults=faults) as server,
        publisher_for(server, bus, publisher_mode="direct") as service,
    ):
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=60, what="every message settled")
        stats = (await sandbox_stats(server))["threatstream"]
        values = {obj["value"] for obj in await sandbox_objects(server)}
    extra_requests = stats["requests"]["upsert"] - 1
    assert extra_requests <= 2 * math.ceil(math.log2(BATCH_SIZE))
    assert values == {indicator.observable.value for indicator in indicators} - {poison}
    ((reason, description),) = await dead_letters(bus)
    assert (reason, description) == (
        REJECTED_REASON,
        f"ThreatStream answered 400: objects: {poison!r} is not accepted.",
    )
    assert (counts(service).completed, counts(service).dead_lettered) == (BATCH_SIZE - 1, 1)


async def test_an_unknown_threatstream_ceiling_costs_no_message_and_no_request_inside_a_retry_after(
    sandbox_factory: SandboxFactory,
) -> None:
    """ThreatStream takes 4 requests/s (429 + Retry-After beyond), which the publisher is not told; it starts
    far above (the fixtures' 100/s), is throttled, and every batch still lands with nothing sent inside a
    window: every request of the process (searches, upserts, confirmations) waits on its one pacer."""
    indicators = mixed_indicators(600)
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    async with (
        sandbox_factory(indicators=0, faults={"threatstream": {"rate_ceiling": 4}}) as server,
        publisher_for(server, bus, publisher_mode="direct", publisher_batch_size=100) as service,
    ):
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=120, what="every message settled")
        stats = await sandbox_stats(server)
        values = {obj["value"] for obj in await sandbox_objects(server)}
    assert stats["requests"]["threatstream"]["429"] > 0
    assert stats["inside_retry_after"]["threatstream"] == 0
    assert values == {indicator.observable.value for indicator in indicators}
    assert depth(bus, dead_letter=True) == 0
    assert counts(service).throttled == stats["requests"]["threatstream"]["429"]


async def test_a_year_9999_row_in_approval_mode_is_published_while_everything_flows(
    sandbox_factory: SandboxFactory,
) -> None:
    forever = scored_indicator(7, valid_until=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    indicators = [forever, *mixed_indicators(20)]
    bus = MemoryBus()
    await publish_scored(bus, indicators)
    async with (
        sandbox_factory(indicators=0) as server,
        publisher_for(server, bus, publisher_mode="approval", publisher_auto_approve=True) as service,
    ):
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=60)
        objects = {obj["value"]: obj for obj in await sandbox_objects(server)}
    assert set(objects) == {one.observable.value for one in indicators}
    assert objects[forever.observable.value]["expiration_ts"] < "2040"
    assert (counts(service).completed, counts(service).dead_lettered) == (len(indicators), 0)


async def test_a_stale_revision_is_never_applied_over_a_newer_one(sandbox_factory: SandboxFactory) -> None:
    """A revocation applied, then the older publication it revoked comes back (a dead publisher's lapsed lock)."""
    older = scored_indicator(3, time_generated=INDICATOR_TIME, upstream_version="v1")
    (revoked,) = expired([older])
    async with sandbox_factory(indicators=0) as server:
        bus = MemoryBus()
        async with publisher_for(server, bus, publisher_mode="direct") as service, running(service):
            await publish_scored(bus, [older])
            await eventually(lambda: depth(bus) == 0)
            await publish_scored(bus, [revoked])
            await eventually(lambda: depth(bus) == 0)
            # The same message again (as a lapsed lock or a replay delivers it: duplicate detection lets it by).
            envelope = envelope_for(older)
            redelivered = OutgoingMessage(
                body=encode(envelope), message_id="redelivered", application_properties=application_properties(envelope)
            )
            await bus.publish(SCORED_TOPIC, [redelivered])
            await eventually(lambda: counts(service).completed == 3)
        (obj,) = await sandbox_objects(server)
    assert obj["status"] == "inactive"
