"""The ThreatStream client against the sandbox's ThreatStream: what it stores from our requests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tests.fixtures.publisher import (
    MALICIOUS,
    MAPPING,
    SUSPICIOUS,
    WIRE,
    observable,
    sandbox_faults,
    sandbox_objects,
    sandbox_settings,
    sandbox_stats,
    scored_indicator,
)
from tests.fixtures.sandbox import SandboxFactory
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import IndicatorScored, ObservableType, Tlp, Verdict
from tibridge.publisher.app import gateway_for
from tibridge.publisher.batching import import_groups
from tibridge.publisher.mapping import IntelObject, IntelStatus, intel_objects
from tibridge.publisher.payloads import import_request, upsert_request
from tibridge.publisher.threatstream import Answer, Gateway, Outcome
from tibridge.sandbox import SandboxServer

UNTIL = datetime(2027, 6, 1, 12, tzinfo=UTC)
INDICATORS = [
    scored_indicator(observable(ObservableType.IPV4), MALICIOUS, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.IPV6), SUSPICIOUS, valid_until=UNTIL, tlp=Tlp.GREEN),
    scored_indicator(observable(ObservableType.DOMAIN), MALICIOUS, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.URL), None, confidence=100, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.FILE_HASH), None, confidence=100, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.EMAIL), None, confidence=100, valid_until=UNTIL),
]
EXPECTED_ITYPES = {
    "203.0.113.7": "mal_ip",
    "2001:db8::7": "suspicious_ipv6",
    "bad.example.com": "mal_domain",
    "http://bad.example.com/login.php": "mal_url",
    "d41d8cd98f00b204e9800998ecf8427e": "mal_md5",
    "phish@bad.example.com": "mal_email",
}


@contextlib.asynccontextmanager
async def gateway_to(server: SandboxServer, **overrides: object) -> AsyncIterator[Gateway]:
    async with contextlib.AsyncExitStack() as resources:
        yield gateway_for(sandbox_settings(server, **overrides), resources, SystemClock())


def objects_for(indicators: Sequence[IndicatorScored]) -> list[IntelObject]:
    now = datetime.now(UTC)
    return [obj for one in indicators for obj in intel_objects(one, MAPPING, now)]


async def send_imports(gateway: Gateway, objects: Sequence[IntelObject], default_state: IntelStatus) -> list[Answer]:
    wire = replace(WIRE, default_state=default_state)
    return [
        await gateway.send(
            import_request(group.view, [obj.observable.value for obj in group.members], wire, group.mappings)
        )
        for group in import_groups(objects, lambda obj: obj)
    ]


async def test_a_direct_upsert_stores_every_kind_with_our_fields(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=0) as server, gateway_to(server) as gateway:
        answer = await gateway.send(upsert_request(objects_for(INDICATORS), WIRE))
        assert answer.outcome is Outcome.ACCEPTED, answer.detail
        held = {obj["value"]: obj for obj in await sandbox_objects(server)}
    assert {value: obj["itype"] for value, obj in held.items()} == EXPECTED_ITYPES
    ip = held["203.0.113.7"]
    assert (ip["status"], ip["confidence"], ip["severity"]) == ("active", 92, "very-high")
    assert (ip["classification"], ip["threat_type"]) == ("private", "malware")
    assert ip["expiration_ts"] == "2027-06-01T12:00:00Z"
    assert ip["source_confidence_weight"] == 100
    assert {"name": "Known C2 infrastructure", "tlp": "amber"} in ip["tags"]
    assert held["2001:db8::7"]["tags"][0] == {"name": "mdti", "tlp": "green"}
    assert held["phish@bad.example.com"]["confidence"] == 100


async def test_auto_approved_import_sessions_store_every_kind(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=0) as server, gateway_to(server) as gateway:
        answers = await send_imports(gateway, objects_for(INDICATORS), IntelStatus.ACTIVE)
        assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
        held = {obj["value"]: obj for obj in await sandbox_objects(server)}
    assert {value: obj["itype"] for value, obj in held.items()} == EXPECTED_ITYPES
    domain = held["bad.example.com"]
    assert (domain["status"], domain["confidence"], domain["classification"]) == ("active", 90, "private")
    assert domain["expiration_ts"] == "2027-06-02T00:00:00Z"  # rounded up to the day
    assert domain["import_session_id"] is not None


async def test_import_sessions_wait_for_an_analyst_by_default(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=0) as server, gateway_to(server) as gateway:
        answers = await send_imports(gateway, objects_for(INDICATORS[:1]), IntelStatus.INACTIVE)
        assert [answer.outcome for answer in answers] == [Outcome.ACCEPTED]
        stats = await sandbox_stats(server)
        assert (stats["threatstream"]["pending_approval"], stats["threatstream"]["objects"]) == (1, 0)


@pytest.mark.parametrize("mode", ["direct", "approval"])
async def test_sending_again_updates_and_an_expiry_deactivates(sandbox_factory: SandboxFactory, mode: str) -> None:
    expiries = [scored_indicator(one.observable, None, verdict=Verdict.EXPIRE) for one in INDICATORS]
    async with sandbox_factory(indicators=0) as server, gateway_to(server) as gateway:
        for batch in (INDICATORS, INDICATORS, expiries):
            objects = objects_for(batch)
            if mode == "direct":
                answers = [await gateway.send(upsert_request(objects, WIRE))]
            else:
                answers = await send_imports(gateway, objects, IntelStatus.ACTIVE)
            assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
        stats = (await sandbox_stats(server))["threatstream"]
        held = await sandbox_objects(server)
    assert stats["duplicates_created"] == 0
    published = {(obj["value"], obj["itype"]) for obj in held if obj["itype"] == EXPECTED_ITYPES[obj["value"]]}
    assert published == set(EXPECTED_ITYPES.items())
    # Expiring without a reputation also covers the other itype we could have published under.
    assert {obj["status"] for obj in held} == {"inactive"}


@pytest.mark.parametrize("mode", ["direct", "approval"])
async def test_a_rejected_value_is_a_400_with_its_message(sandbox_factory: SandboxFactory, mode: str) -> None:
    async with sandbox_factory(indicators=0) as server, gateway_to(server) as gateway:
        await sandbox_faults(server, {"reject_values": "^bad\\.example\\.com$"})
        objects = objects_for(INDICATORS)
        if mode == "direct":
            (answer,) = [await gateway.send(upsert_request(objects, WIRE))]
        else:
            answers = await send_imports(gateway, objects, IntelStatus.ACTIVE)
            (answer,) = [answer for answer in answers if answer.outcome is not Outcome.ACCEPTED]
    assert (answer.outcome, answer.status) == (Outcome.REJECTED, 400)
    assert "'bad.example.com' is not accepted" in answer.detail


async def test_a_wrong_key_is_refused_with_what_to_fix(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=0) as server, gateway_to(server, threatstream_api_key="wrong") as gateway:
        answer = await gateway.send(upsert_request(objects_for(INDICATORS[:1]), WIRE))
    assert (answer.outcome, answer.status) == (Outcome.REFUSED, 401)
    assert "TIBRIDGE_THREATSTREAM_API_KEY" in answer.detail


async def test_throttling_is_honoured_and_retried(sandbox_factory: SandboxFactory) -> None:
    faults = {"threatstream": {"rate_ceiling": 1.0, "burst": 1}}
    async with sandbox_factory(indicators=0, faults=faults) as server, gateway_to(server) as gateway:
        answers = [await gateway.send(upsert_request(objects_for([one]), WIRE)) for one in INDICATORS[:3]]
        stats = await sandbox_stats(server)
    assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
    assert stats["requests"]["threatstream"].get("429", 0) > 0
    assert stats["inside_retry_after"]["threatstream"] == 0
    assert gateway.counts().retries == stats["requests"]["threatstream"]["429"]


async def test_the_api_key_appears_in_no_log_line(
    sandbox_factory: SandboxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key = "a-much-longer-sandbox-api-key-7f3e9"
    async with sandbox_factory(indicators=0, threatstream_api_key=key) as server:
        async with gateway_to(server, threatstream_max_attempts=2) as gateway:
            with caplog.at_level(logging.DEBUG):
                ok = await gateway.send(upsert_request(objects_for(INDICATORS), WIRE))
                await sandbox_faults(server, {"p500": 1.0})
                failing = await gateway.send(upsert_request(objects_for(INDICATORS), WIRE))
        await sandbox_faults(server, {"p500": 0.0})
        async with gateway_to(server, threatstream_api_key=key + "-nope") as gateway:
            with caplog.at_level(logging.DEBUG):
                refused = await gateway.send(upsert_request(objects_for(INDICATORS), WIRE))
    assert [ok.outcome, failing.outcome, refused.outcome] == [Outcome.ACCEPTED, Outcome.UNAVAILABLE, Outcome.REFUSED]
    assert {record.name.split(".")[0] for record in caplog.records} >= {"httpx", "httpcore"}
    leaked = [record.getMessage() for record in caplog.records if key in record.getMessage()]
    assert leaked == []
