"""The ThreatStream client against the sandbox's strict ThreatStream (sandbox/README.md), one wire fact of
external-apis.md §3 at a time: what it stores from our requests, what it refuses, and what a client can read
back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.fixtures.publisher import (
    MALICIOUS,
    SUSPICIOUS,
    observable,
    sandbox_faults,
    sandbox_objects,
    sandbox_settings,
    sandbox_stats,
    scored_indicator,
)
from tests.fixtures.sandbox import SandboxFactory
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import HashAlgorithm, IndicatorScored, Observable, ObservableType, Tlp, Verdict
from tibridge.publisher.app import gateway_for
from tibridge.publisher.ownership import OwnershipIndex, read_page
from tibridge.publisher.payloads import (
    Permission,
    ThreatStreamRequest,
    deactivate_request,
    owned_search,
    session_objects_search,
    session_request,
    upsert_request,
    whitelist_request,
)
from tibridge.publisher.planning import Item, Planner
from tibridge.publisher.sessions import session_id_of, session_state
from tibridge.publisher.settings import PublishingSettings, PublishMode, TlpSpelling
from tibridge.publisher.threatstream import Answer, Gateway, Outcome
from tibridge.sandbox import SandboxServer

UNTIL = datetime(2027, 6, 1, 12, tzinfo=UTC)
SHA1 = Observable(type=ObservableType.FILE_HASH, value="b" * 40, hash_algorithm=HashAlgorithm.SHA1)
SHA512 = Observable(type=ObservableType.FILE_HASH, value="c" * 128, hash_algorithm=HashAlgorithm.SHA512)
INDICATORS = [
    scored_indicator(observable(ObservableType.IPV4), MALICIOUS, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.IPV6), SUSPICIOUS, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.DOMAIN), MALICIOUS, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.URL), None, confidence=100, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.FILE_HASH), None, confidence=100, valid_until=UNTIL),
    scored_indicator(SHA1, None, confidence=100, valid_until=UNTIL),
    scored_indicator(SHA512, None, confidence=100, valid_until=UNTIL),
    scored_indicator(observable(ObservableType.EMAIL), None, confidence=100, valid_until=UNTIL),
]
EXPECTED = {
    "203.0.113.7": ("mal_ip", "ip", None),
    "2001:db8::7": ("mal_ipv6", "ipv6", None),  # IPv6 under `ipv6`, always mal_ipv6
    "bad.example.com": ("mal_domain", "domain", None),
    "http://bad.example.com/login.php": ("mal_url", "url", None),
    "d41d8cd98f00b204e9800998ecf8427e": ("mal_md5", "md5", "MD5"),
    "b" * 40: ("mal_md5", "md5", "SHA1"),
    "c" * 128: ("mal_md5", "md5", "SHA512"),
    "phish@bad.example.com": ("mal_email", "email", None),
}
# Nothing seeded: each test says what ThreatStream holds before it.
EMPTY: dict[str, Any] = {"indicators": 0, "threatstream_processing_seconds": 0}


@contextlib.asynccontextmanager
async def gateway_to(server: SandboxServer, **overrides: object) -> AsyncIterator[Gateway]:
    async with contextlib.AsyncExitStack() as resources:
        yield gateway_for(sandbox_settings(server, **overrides), resources, SystemClock())


def planned(
    indicators: Sequence[IndicatorScored], publishing: PublishingSettings, index: OwnershipIndex | None = None
) -> list[ThreatStreamRequest]:
    items = [Item(str(n), scored) for n, scored in enumerate(indicators)]
    plan = Planner(publishing).plan(items, index or OwnershipIndex(), datetime.now(UTC))
    assert plan.refused == {}
    return [action.request for action in plan.actions]


async def send_all(gateway: Gateway, requests: Sequence[ThreatStreamRequest]) -> list[Answer]:
    return [await gateway.send(request) for request in requests]


async def session_details(server: SandboxServer, answer: Answer) -> dict[str, Any]:
    """The sandbox's own record of a session (not a real API: a client gets only the counts)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        details: dict[str, Any] = (
            await client.get(f"/_sandbox/threatstream/sessions/{session_id_of(answer.body)}")
        ).json()
        return details


def held_fields(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str, str | None]]:
    return {obj["value"]: (obj["itype"], obj["type"], obj["subtype"]) for obj in objects}


# -- what ThreatStream stores ---------------------------------------------------------------------------------------


async def test_a_direct_upsert_stores_every_kind_under_its_documented_key(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(**EMPTY) as server, gateway_to(server) as gateway:
        direct = PublishingSettings(mode=PublishMode.DIRECT)
        answers = await send_all(gateway, planned(INDICATORS, direct))
        assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
        held = await sandbox_objects(server)
        stats = (await sandbox_stats(server))["threatstream"]
    assert stats["ignored_reasons"] == {}, "ThreatStream would have left something out"
    assert held_fields(held) == EXPECTED
    ip = next(obj for obj in held if obj["value"] == "203.0.113.7")
    assert (ip["status"], ip["confidence"], ip["meta"]["severity"], ip["tlp"]) == ("active", 92, "very-high", "amber")
    assert (ip["is_public"], ip["threat_type"], ip["expiration_ts"]) == (False, "malware", "2027-06-01T12:00:00.000Z")
    assert {"tibridge", "mdti", "Known C2 infrastructure"} <= {tag["name"] for tag in ip["tags"]}


async def test_auto_approved_import_sessions_store_every_kind_and_no_field_is_ignored(
    sandbox_factory: SandboxFactory,
) -> None:
    async with sandbox_factory(**EMPTY) as server, gateway_to(server) as gateway:
        auto = PublishingSettings(mode=PublishMode.APPROVAL, auto_approve=True)
        requests = planned(INDICATORS, auto)
        answers = await send_all(gateway, requests)
        assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
        details = [await session_details(server, answer) for answer in answers]
        held = await sandbox_objects(server)
    # One session: every kind, one itype each; ip_mapping gave IPv6 its _ipv6 form (no ipv6_mapping exists).
    assert len(requests) == 1
    assert [(one["status"], one["ignored_form_fields"], one["rejected"]) for one in details] == [("approved", [], [])]
    assert held_fields(held) == EXPECTED
    assert all(obj["import_session_id"] is not None for obj in held)


async def test_sessions_wait_for_an_analyst_and_report_their_counts_when_processed(
    sandbox_factory: SandboxFactory,
) -> None:
    config = {**EMPTY, "threatstream_processing_seconds": 0.3, "threatstream_whitelist": ("bad.example.com",)}
    async with sandbox_factory(**config) as server, gateway_to(server) as gateway:
        (request,) = planned(INDICATORS[:3], PublishingSettings(mode=PublishMode.APPROVAL))
        (answer,) = await send_all(gateway, [request])
        session_id = session_id_of(answer.body)
        assert session_id is not None
        first = session_state((await gateway.send(session_request(session_id))).body)
        assert first is not None
        assert not first.final
        state = first
        for _ in range(50):
            state = session_state((await gateway.send(session_request(session_id))).body) or state
            if state.final:
                break
            await asyncio.sleep(0.1)
        whitelist = await gateway.send(whitelist_request(0))
        landed = await gateway.send(session_objects_search(session_id, None))
        stats = (await sandbox_stats(server))["threatstream"]
    assert (state.status, state.accepted, state.rejected) == ("done", 2, 1)
    assert stats["pending_approval"] == 2
    # Why it was rejected, as a client can learn it: the organisation's whitelist.
    assert [entry["value"] for entry in whitelist.body["objects"]] == ["bad.example.com"]
    # Nothing has landed while the session waits for approval.
    assert landed.body["objects"] == []


# -- what ThreatStream refuses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sandbox_tlp", "ours", "refusal", "refused"),
    [
        # The default spelling is safe under either vocabulary: nothing refused.
        ("tlp1", TlpSpelling.SAFE, "object", set()),
        ("tlp2", TlpSpelling.SAFE, "request", set()),
        # The other spelling: only the observables that carry it are left out, the batch's others land.
        ("tlp1", TlpSpelling.TLP2, "object", {"bad.example.com"}),
        ("tlp2", TlpSpelling.TLP1, "object", {"bad.example.com"}),
    ],
)
async def test_a_sandbox_that_rejects_the_other_tlp_spelling(
    sandbox_factory: SandboxFactory, sandbox_tlp: str, ours: TlpSpelling, refusal: str, refused: set[str]
) -> None:
    indicators = [
        scored_indicator(observable(ObservableType.DOMAIN), tlp=Tlp.CLEAR),
        scored_indicator(observable(ObservableType.IPV4), tlp=Tlp.AMBER),
        scored_indicator(observable(ObservableType.URL), None, tlp=Tlp.GREEN),
    ]
    config = {**EMPTY, "threatstream_tlp": sandbox_tlp, "threatstream_tlp_refusal": refusal}
    async with sandbox_factory(**config) as server, gateway_to(server) as gateway:
        direct = PublishingSettings(mode=PublishMode.DIRECT, tlp_spelling=ours)
        answers = await send_all(gateway, planned(indicators, direct))
        held = {obj["value"] for obj in await sandbox_objects(server)}
    assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
    assert held == {scored.observable.value for scored in indicators} - refused


async def test_a_request_refused_for_its_tlp_is_a_400_the_publisher_can_bisect(sandbox_factory: SandboxFactory) -> None:
    config = {**EMPTY, "threatstream_tlp": "tlp1", "threatstream_tlp_refusal": "request"}
    async with sandbox_factory(**config) as server, gateway_to(server) as gateway:
        direct = PublishingSettings(mode=PublishMode.DIRECT, tlp_spelling=TlpSpelling.TLP2)
        (answer,) = await send_all(gateway, planned([scored_indicator(1, tlp=Tlp.CLEAR)], direct))
    assert (answer.outcome, answer.status) == (Outcome.REJECTED, 400)
    assert "TLP 'clear'" in answer.detail


@pytest.mark.parametrize(
    ("permissions", "publishing", "lacking"),
    [
        (["import"], PublishingSettings(mode=PublishMode.DIRECT), Permission.APPROVE_INTEL),
        (["import"], PublishingSettings(mode=PublishMode.APPROVAL, auto_approve=True), Permission.APPROVE_IMPORT),
        ([], PublishingSettings(mode=PublishMode.APPROVAL), Permission.IMPORT),
    ],
)
async def test_a_missing_permission_is_forbidden_and_named(
    sandbox_factory: SandboxFactory, permissions: list[str], publishing: PublishingSettings, lacking: Permission
) -> None:
    async with sandbox_factory(**EMPTY, threatstream_permissions=permissions) as server, gateway_to(server) as gateway:
        (answer,) = await send_all(gateway, planned([scored_indicator(1)], publishing))
        (search,) = await send_all(gateway, [owned_search("tibridge", None)])
    assert (answer.outcome, answer.permission) == (Outcome.FORBIDDEN, lacking)
    assert f"'{lacking}'" in answer.detail
    assert search.outcome is Outcome.ACCEPTED  # reading needs no permission


async def test_deactivating_by_id_needs_approve_intel(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(**EMPTY, threatstream_permissions=["import"]) as server, gateway_to(server) as gateway:
        answer = await gateway.send(deactivate_request(1))
    assert (answer.outcome, answer.permission) == (Outcome.FORBIDDEN, Permission.APPROVE_INTEL)


# -- reading back what is ours ------------------------------------------------------------------------------------


async def test_only_what_we_wrote_reads_back_as_ours_and_foreign_entries_stay_untouched(
    sandbox_factory: SandboxFactory,
) -> None:
    publishing = PublishingSettings(mode=PublishMode.DIRECT)
    async with sandbox_factory(indicators=300, threatstream_foreign_share=1.0) as server:
        foreign = {obj["id"]: obj for obj in (await _all_objects(server)) if obj["foreign"]}
        values = sorted({obj["value"] for obj in foreign.values()})[:40]
        assert values
        async with gateway_to(server) as gateway:
            index = OwnershipIndex()
            page = read_page((await gateway.send(owned_search("tibridge", None))).body, publishing)
            assert page is not None
            index.apply(page)
            # The seeded entries (some under our itypes, with `mdti`, even `tibridge` tags) are none of ours.
            assert len(index) == 0
            # Expiring every one of those values sends nothing: nothing of ours holds them.
            expiries = [
                scored_indicator(observable_of(obj), None, verdict=Verdict.EXPIRE)
                for obj in foreign.values()
                if obj["value"] in values
            ]
            assert planned(expiries, publishing, index) == []
            # A change by id of another organisation's entry is refused (403), never applied.
            other_org = next(obj for obj in foreign.values() if not obj["is_editable"])
            refused = await gateway.send(deactivate_request(other_org["id"]))
        stats = (await sandbox_stats(server))["threatstream"]
    assert (refused.outcome, refused.status) == (Outcome.REJECTED, 403)
    assert stats["foreign"]["changed"] == []


async def _all_objects(server: SandboxServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        objects: list[dict[str, Any]] = (await client.get("/_sandbox/threatstream/objects?include=all")).json()[
            "objects"
        ]
        return objects


ALGORITHMS = {"MD5": HashAlgorithm.MD5, "SHA1": HashAlgorithm.SHA1, "SHA256": HashAlgorithm.SHA256}
ALGORITHMS |= {"SHA512": HashAlgorithm.SHA512}
KINDS = {"ip": ObservableType.IPV4, "ipv6": ObservableType.IPV6, "domain": ObservableType.DOMAIN}
KINDS |= {"url": ObservableType.URL, "email": ObservableType.EMAIL, "md5": ObservableType.FILE_HASH}


def observable_of(obj: dict[str, Any]) -> Observable:
    """The observable a search object is about, as the contracts spell it."""
    return Observable(type=KINDS[obj["type"]], value=obj["value"], hash_algorithm=ALGORITHMS.get(obj["subtype"]))


async def test_our_objects_read_back_in_update_order_and_deactivate_by_id(sandbox_factory: SandboxFactory) -> None:
    publishing = PublishingSettings(mode=PublishMode.DIRECT)
    async with sandbox_factory(**EMPTY) as server, gateway_to(server) as gateway:
        await send_all(gateway, planned(INDICATORS, publishing))
        index = OwnershipIndex()
        page = read_page((await gateway.send(owned_search("tibridge", None, ("active", "falsepos")))).body, publishing)
        assert page is not None
        index.apply(page)
        assert {obj.value for value in EXPECTED for obj in index.held(value)} == set(EXPECTED)
        target = index.held("203.0.113.7")[0]
        answer = await gateway.send(deactivate_request(target.id))
        changed = read_page((await gateway.send(owned_search("tibridge", index.watermark))).body, publishing)
        held = {obj["value"]: obj for obj in await sandbox_objects(server)}
    assert answer.outcome is Outcome.ACCEPTED
    assert changed is not None
    assert [(obj.id, obj.status) for obj in changed.owned] == [(target.id, "inactive")]
    assert held["203.0.113.7"]["status"] == "inactive"
    assert held["203.0.113.7"]["tags"] is not None  # what it was stamped with stays


# -- the client's manners -------------------------------------------------------------------------------------------


async def test_a_wrong_key_is_refused_with_what_to_fix(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(**EMPTY) as server, gateway_to(server, threatstream_api_key="wrong") as gateway:
        answer = await gateway.send(upsert_request([], PublishingSettings()))
    assert (answer.outcome, answer.status) == (Outcome.REFUSED, 401)
    assert "TIBRIDGE_THREATSTREAM_API_KEY" in answer.detail


async def test_throttling_is_honoured_and_retried(sandbox_factory: SandboxFactory) -> None:
    faults = {"threatstream": {"rate_ceiling": 1.0, "burst": 1}}
    async with sandbox_factory(**EMPTY, faults=faults) as server, gateway_to(server) as gateway:
        answers = [await gateway.send(owned_search("tibridge", None)) for _ in range(3)]
        stats = await sandbox_stats(server)
    assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
    assert stats["requests"]["threatstream"].get("429", 0) > 0
    assert stats["inside_retry_after"]["threatstream"] == 0
    assert gateway.counts().retries == stats["requests"]["threatstream"]["429"]


async def test_the_api_key_appears_in_no_log_line(
    sandbox_factory: SandboxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key = "a-much-longer-sandbox-api-key-7f3e9"
    direct = PublishingSettings(mode=PublishMode.DIRECT)
    async with sandbox_factory(**EMPTY, threatstream_api_key=key) as server:
        async with gateway_to(server, threatstream_max_attempts=2) as gateway:
            with caplog.at_level(logging.DEBUG):
                (ok,) = await send_all(gateway, planned(INDICATORS, direct))
                await sandbox_faults(server, {"p500": 1.0})
                (failing,) = await send_all(gateway, planned(INDICATORS, direct))
        await sandbox_faults(server, {"p500": 0.0})
        async with gateway_to(server, threatstream_api_key=key + "-nope") as gateway:
            with caplog.at_level(logging.DEBUG):
                (refused,) = await send_all(gateway, planned(INDICATORS, direct))
    assert [ok.outcome, failing.outcome, refused.outcome] == [Outcome.ACCEPTED, Outcome.UNAVAILABLE, Outcome.REFUSED]
    assert {record.name.split(".")[0] for record in caplog.records} >= {"httpx", "httpcore"}
    leaked = [record.getMessage() for record in caplog.records if key in record.getMessage()]
    assert leaked == []
