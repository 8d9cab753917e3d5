"""ThreatStream's store (external-apis.md §3): vocabulary, asynchronous sessions, upsert, change by id, search."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tibridge.sandbox.intel import (
    IgnoredReason,
    IntelForbidden,
    IntelRequestError,
    IntelStore,
    RejectedReason,
    SessionStatus,
    StoreRules,
    check_search,
    classify,
    parse_import,
)
from tibridge.sandbox.seeding import foreign_entries, whitelist
from tibridge.sandbox.vocabulary import ITYPES, IntelKind, TlpVocabulary, ipv6_itype_for

START = datetime(2026, 11, 1, tzinfo=UTC)
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def rules(**overrides: Any) -> StoreRules:
    settings: dict[str, Any] = {"processing": timedelta(seconds=1), "max_objects_per_request": 100, **overrides}
    return StoreRules(itypes=ITYPES, **settings)


def store(clock: Clock | None = None, **overrides: Any) -> IntelStore:
    return IntelStore(clock or Clock(), rules(**overrides))


def upsert(intel: IntelStore, *objects: Mapping[str, object], allow_update: bool = True) -> int:
    return intel.upsert({"meta": {"allow_update": allow_update, "confidence": 80}, "objects": list(objects)})


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("203.0.113.9", IntelKind.IP),
        ("2001:db8::1", IntelKind.IPV6),
        ("evil.example.com", IntelKind.DOMAIN),
        ("xn--bcher-kva.example", IntelKind.DOMAIN),
        ("https://evil.example.com/a?b=c", IntelKind.URL),
        ("d41d8cd98f00b204e9800998ecf8427e", IntelKind.HASH),
        (SHA256, IntelKind.HASH),
        ("ab" * 64, IntelKind.HASH),
        ("j.smith@evil.example.com", IntelKind.EMAIL),
        ("not-an-observable", None),
        ("http://", None),
    ],
)
def test_values_are_classified_like_threatstream_extracts_them(value: str, kind: IntelKind | None) -> None:
    assert classify(value) is kind


def test_the_vocabulary_is_threatstreams_own() -> None:
    """§3: real itypes such as anon_proxy exist; invented ones such as suspicious_md5 do not."""
    assert ITYPES["anon_proxy"] is IntelKind.IP
    assert ITYPES["mal_ipv6"] is IntelKind.IPV6
    assert ITYPES["mal_md5"] is IntelKind.HASH
    for invented in ("suspicious_md5", "c2_md5", "suspicious_ipv6", "evil_ip"):
        assert invented not in ITYPES
    assert ipv6_itype_for("c2_ip", ITYPES) == "c2_ipv6"
    assert ipv6_itype_for("suspicious_ip", ITYPES) is None


def test_upsert_creates_then_updates_and_per_object_fields_win() -> None:
    intel = store()
    created = upsert(
        intel, {"srcip": "203.0.113.9", "itype": "mal_ip"}, {"domain": "evil.example", "itype": "c2_domain"}
    )
    assert created == 2
    upsert(intel, {"srcip": "203.0.113.9", "itype": "mal_ip", "confidence": 95})
    assert (intel.counts.created, intel.counts.updated, intel.counts.duplicates_created) == (2, 1, 0)
    ip = intel.by_value("203.0.113.9")[0]
    assert (ip.attributes.confidence, ip.status, ip.kind) == (95, "active", IntelKind.IP)


def test_without_allow_update_a_second_object_is_created_and_counted() -> None:
    intel = store()
    upsert(intel, {"domain": "evil.example", "itype": "mal_domain"}, allow_update=False)
    upsert(intel, {"domain": "evil.example", "itype": "mal_domain"}, allow_update=False)
    upsert(intel, {"domain": "evil.example", "itype": "phish_domain"}, allow_update=False)
    assert (len(intel.objects), intel.counts.created, intel.counts.duplicates_created) == (3, 3, 1)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"srcip": "203.0.113.10"}, IgnoredReason.MISSING_ITYPE),
        ({"srcip": "203.0.113.9", "itype": "evil_ip"}, IgnoredReason.UNKNOWN_ITYPE),
        ({"md5": SHA256, "itype": "suspicious_md5", "subtype": "SHA256"}, IgnoredReason.UNKNOWN_ITYPE),
        ({"srcip": "203.0.113.9", "itype": "mal_domain"}, IgnoredReason.ITYPE_OF_ANOTHER_KIND),
        ({"srcip": "2001:db8::1", "itype": "mal_ip"}, IgnoredReason.VALUE_DOES_NOT_FIT),
        ({"srcip": "evil.example", "itype": "mal_ip"}, IgnoredReason.VALUE_DOES_NOT_FIT),
        ({"itype": "mal_domain"}, IgnoredReason.NO_VALUE),
        ({"value": "evil.example", "itype": "mal_domain"}, IgnoredReason.NO_VALUE),
        ({"md5": SHA256, "itype": "mal_md5", "subtype": "MD5"}, IgnoredReason.BAD_SUBTYPE),
        ({"srcip": "203.0.113.9", "itype": "mal_ip", "confidence": 300}, IgnoredReason.INVALID_FIELD),
        ({"srcip": "203.0.113.9", "itype": "mal_ip", "status": "inactive"}, IgnoredReason.STATUS_NOT_HONOURED),
        (
            {"srcip": "203.0.113.9", "itype": "mal_ip", "expiration_ts": "2026-10-01T00:00:00Z"},
            IgnoredReason.EXPIRATION_IN_THE_PAST,
        ),
        ({"srcip": "203.0.113.9", "itype": "mal_ip", "tlp": "white"}, IgnoredReason.TLP_NOT_IN_VOCABULARY),
        (
            {"srcip": "203.0.113.9", "itype": "mal_ip", "tags": [{"name": "x", "tlp": "WHITE"}]},
            IgnoredReason.TLP_NOT_IN_VOCABULARY,
        ),
    ],
)
def test_an_object_threatstream_would_not_take_is_left_out_and_counted(
    obj: dict[str, object], reason: IgnoredReason
) -> None:
    """§3: "a 2xx means the JSON was valid, not that every object was created"."""
    intel = store()
    assert upsert(intel, {"srcip": "198.51.100.1", "itype": "anon_proxy"}, obj) == 1
    assert [o.value for o in intel.objects.values()] == ["198.51.100.1"]
    assert intel.counts.ignored == {reason: 1}


def test_ipv6_lands_under_ipv6_with_an_ipv6_itype_and_hashes_keep_their_subtype() -> None:
    intel = store()
    upsert(
        intel, {"ipv6": "2001:db8::1", "itype": "mal_ipv6"}, {"md5": SHA256, "itype": "mal_md5", "subtype": "SHA256"}
    )
    ipv6, sha = (intel.by_value(v)[0].to_json() for v in ("2001:db8::1", SHA256))
    assert (ipv6["type"], ipv6["itype"], ipv6["subtype"]) == ("ipv6", "mal_ipv6", None)
    assert (sha["type"], sha["itype"], sha["subtype"]) == ("md5", "mal_md5", "SHA256")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"objects": "x"}, "the body must be JSON"),
        ({"meta": {}, "objects": [{"srcip": "203.0.113.9", "itype": "mal_ip"}, "x"]}, r"objects\[1\] is not an object"),
        ({"meta": {"confidence": 300}, "objects": []}, "meta: confidence"),
        ({"meta": {"status": "inactive"}, "objects": []}, "meta.status is not honoured"),
        ({"meta": {"tlp": "white"}, "objects": []}, "TLP 'white'"),
    ],
)
def test_a_structurally_wrong_upsert_is_refused_whole(body: dict[str, object], message: str) -> None:
    intel = store()
    with pytest.raises(IntelRequestError, match=message):
        intel.upsert(body)
    assert not intel.objects


def test_with_request_refusal_a_tlp_of_the_other_spelling_refuses_the_whole_upsert() -> None:
    intel = store(tlp=TlpVocabulary.TLP1, tlp_refusal="request")
    with pytest.raises(IntelRequestError, match="'clear' is not one of white, green, amber, red"):
        upsert(
            intel,
            {"srcip": "198.51.100.1", "itype": "mal_ip"},
            {"srcip": "198.51.100.2", "itype": "mal_ip", "tlp": "clear"},
        )
    assert not intel.objects
    assert upsert(intel, {"srcip": "198.51.100.2", "itype": "mal_ip", "tlp": "white"}) == 1


def test_more_objects_than_allowed_are_refused() -> None:
    with pytest.raises(IntelRequestError, match="at most 2"):
        upsert(store(max_objects_per_request=2), *({"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(3)))


def test_an_import_is_processing_first_then_waits_for_approval_then_approving_then_approved() -> None:
    clock = Clock()
    intel = store(clock)
    fields = {
        "datatext": f"203.0.113.9, evil.example\nhttp://evil.example/x junk!! 2001:db8::1 {SHA256}",
        "ip_mapping": "c2_ip",
        "ipv6_mapping": "suspicious_ipv6",  # documented nowhere: ignored, not honoured
        "md5_mapping": "mal_md5",
    }
    session = intel.import_datatext(parse_import(fields, intel.rules))
    assert session.to_json()["status"] == "processing"
    assert (session.to_json()["numIndicators"], session.to_json()["numRejected"]) == (0, 0)
    clock.advance(1)
    done = intel.session(session.id).to_json()
    assert (done["status"], done["numIndicators"], done["numRejected"]) == ("done", 5, 1)
    assert (intel.pending_approval, len(intel.objects)) == (5, 0)
    assert session.ignored_fields == ("ipv6_mapping",)
    assert intel.approve_all(session.id).status is SessionStatus.APPROVING
    assert not intel.objects
    clock.advance(1)
    assert intel.session(session.id).status is SessionStatus.APPROVED
    assert {obj.value: obj.itype for obj in intel.objects.values()} == {
        "203.0.113.9": "c2_ip",
        "2001:db8::1": "c2_ipv6",
        "evil.example": "mal_domain",
        "http://evil.example/x": "mal_url",
        SHA256: "mal_md5",
    }
    assert intel.by_value(SHA256)[0].subtype == "SHA256"
    assert all(obj.import_session_id == session.id for obj in intel.objects.values())


def test_an_auto_approved_import_updates_what_it_holds_and_rejections_are_reasoned() -> None:
    clock = Clock()
    intel = store(clock, whitelist=frozenset({"good.example"}))
    first = intel.import_datatext(parse_import({"datatext": "203.0.113.9", "default_state": "active"}, intel.rules))
    clock.advance(1)
    fields = {
        "datatext": "203.0.113.9 good.example 2001:db8::1 nonsense",
        "default_state": "active",
        "ip_mapping": "suspicious_ip",
    }
    second = intel.import_datatext(parse_import(fields, intel.rules))
    clock.advance(1)
    assert (intel.session(first.id).status, second.status) == (SessionStatus.APPROVED, SessionStatus.APPROVED)
    assert dict(second.rejected) == {
        "good.example": RejectedReason.WHITELISTED,
        "2001:db8::1": RejectedReason.NO_IPV6_ITYPE,  # suspicious_ip has no IPv6 form
        "nonsense": RejectedReason.NOT_AN_OBSERVABLE,
    }
    assert (second.to_json()["numIndicators"], second.to_json()["numRejected"]) == (1, 3)
    assert {obj.itype for obj in intel.objects.values()} == {"mal_ip", "suspicious_ip"}


def test_an_import_with_a_tlp_of_the_other_spelling_rejects_every_observable_or_the_request() -> None:
    clock = Clock()
    tags = '[{"name": "mdti", "tlp": "white"}]'
    intel = store(clock)
    session = intel.import_datatext(parse_import({"datatext": "203.0.113.9 evil.example", "tags": tags}, intel.rules))
    clock.advance(1)
    assert intel.session(session.id).status is SessionStatus.ERRORS
    assert {reason for _, reason in session.rejected} == {RejectedReason.TLP_NOT_IN_VOCABULARY}
    strict = store(clock, tlp_refusal="request")
    with pytest.raises(IntelRequestError, match="TLP 'white'"):
        strict.import_datatext(parse_import({"datatext": "203.0.113.9", "tags": tags}, strict.rules))


def test_a_reimport_with_a_past_expiry_is_refused_not_honoured() -> None:
    intel = store()
    fields = {"datatext": "203.0.113.9", "expiration_ts": (START - timedelta(days=1)).isoformat()}
    with pytest.raises(IntelRequestError, match="PATCH /api/v2/intelligence/"):
        intel.import_datatext(parse_import(fields, intel.rules))
    assert not intel.sessions


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "https://feed.example/x"},
        {"datatext": "x", "default_state": "maybe"},
        {"datatext": "x", "ip_mapping": "mal_domain"},
        {"datatext": "x", "md5_mapping": "suspicious_md5"},
        {"datatext": "x", "tags": "not json"},
    ],
)
def test_bad_import_forms_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(IntelRequestError):
        parse_import(fields, rules())


def test_change_by_id_expires_ours_and_refuses_another_organisations() -> None:
    clock = Clock()
    intel = IntelStore(clock, rules(), lambda: foreign_entries([("203.0.113.9", IntelKind.IP)], 1, 1.0, rules(), START))
    upsert(intel, {"srcip": "203.0.113.9", "itype": "mal_ip"})
    ours = next(obj for obj in intel.objects.values() if not obj.foreign)
    before = ours.update_id
    intel.patch(ours.id, {"status": "inactive"})
    assert (ours.status, ours.was_active, ours.update_id > before) == ("inactive", True, True)
    intel.patch(ours.id, {"expiration_ts": (START + timedelta(seconds=5)).isoformat(), "status": "active"})
    assert ours.status == "active"
    clock.advance(6)
    intel.advance()
    assert ours.status == "inactive"  # expired on its own once expiration_ts passed
    with pytest.raises(IntelRequestError, match="cannot be changed here"):
        intel.patch(ours.id, {"value": "203.0.113.10"})
    others = [obj for obj in intel.objects.values() if obj.foreign and not obj.editable]
    for other in others:
        with pytest.raises(IntelForbidden, match="another organization"):
            intel.patch(other.id, {"status": "inactive"})
    assert intel.foreign_changed() == []


def test_foreign_entries_are_seeded_per_value_and_any_change_to_one_is_seen() -> None:
    values = [(f"198.51.100.{i}", IntelKind.IP) for i in range(200)]
    seeded = list(foreign_entries(values, 7, 0.3, rules(), START))
    assert seeded == list(foreign_entries(values, 7, 0.3, rules(), START))
    assert 40 < len({obj.value for obj in seeded}) < 80
    assert {obj.attributes.is_public for obj in seeded} == {True, False}
    assert {"active"} < {obj.status for obj in seeded}
    own_org = [obj for obj in seeded if obj.owner_organization_id == 4242]
    assert own_org
    assert not any(obj.itype.startswith(("mal_", "suspicious_")) for obj in own_org)
    intel = IntelStore(Clock(), rules(), lambda: foreign_entries(values, 7, 0.3, rules(), START))
    assert intel.foreign_changed() == []
    assert not list(intel.ours())
    editable = next(obj for obj in intel.objects.values() if obj.editable)
    intel.patch(editable.id, {"confidence": 1})
    assert intel.foreign_changed() == [editable.id]
    intel.reset()
    assert intel.foreign_changed() == []


def test_the_whitelist_is_a_seeded_share_plus_the_named_values() -> None:
    values = [(f"198.51.100.{i}", IntelKind.IP) for i in range(250)]
    chosen = whitelist(values, 7, 0.1, ["extra.example"])
    assert chosen == whitelist(values, 7, 0.1, ["extra.example"])
    assert "extra.example" in chosen
    assert 10 < len(chosen) < 45


def test_search_filters_orders_by_update_id_and_pages() -> None:
    intel = store()
    upsert(intel, *({"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(5)))
    page, total = intel.search({"status": "active"}, limit=2, offset=4)
    assert (len(page), total) == (1, 5)
    assert intel.search({"value": "203.0.113.3"}, 10, 0)[1] == 1
    first = intel.by_value("203.0.113.0")[0]
    intel.patch(first.id, {"status": "inactive"})
    changed, _ = intel.search({"update_id__gt": str(first.update_id - 1), "order_by": "update_id"}, 10, 0)
    assert [obj.value for obj in changed] == ["203.0.113.0"]
    assert intel.search({"status": "active,inactive", "type": "ip"}, 10, 0)[1] == 5


@pytest.mark.parametrize(
    "query", [{"q": "value=1.2.3.4"}, {"order_by": "value"}, {"update_id__gt": "x"}, {"is_public": "yes"}]
)
def test_search_refuses_filters_it_does_not_offer(query: dict[str, str]) -> None:
    with pytest.raises(IntelRequestError):
        check_search(query)


def test_foreign_entries_are_capped_so_a_big_dataset_starts_quickly() -> None:
    values = [(f"198.51.{i // 250}.{i % 250}", IntelKind.IP) for i in range(2000)]
    capped = list(foreign_entries(values, 7, 0.5, rules(), START, max_values=10))
    assert len({obj.value for obj in capped}) == 10
    assert capped == list(foreign_entries(values, 7, 0.5, rules(), START))[: len(capped)]
