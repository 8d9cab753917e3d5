"""ThreatStream's store: what it holds, and created vs updated vs duplicated."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from tibridge.sandbox.intel import IntelKind, IntelRequestError, IntelStore, classify, parse_import

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def store(max_objects: int = 100) -> IntelStore:
    return IntelStore(lambda: NOW, max_objects)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("203.0.113.9", IntelKind.IP),
        ("2001:db8::1", IntelKind.IPV6),
        ("evil.example.com", IntelKind.DOMAIN),
        ("xn--bcher-kva.example", IntelKind.DOMAIN),
        ("https://evil.example.com/a?b=c", IntelKind.URL),
        ("d41d8cd98f00b204e9800998ecf8427e", IntelKind.HASH),
        ("da39a3ee5e6b4b0d3255bfef95601890afd80709", IntelKind.HASH),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", IntelKind.HASH),
        ("j.smith@evil.example.com", IntelKind.EMAIL),
        ("not-an-observable", None),
        ("http://", None),
    ],
)
def test_values_are_classified_like_threatstream_extracts_them(value: str, kind: IntelKind | None) -> None:
    assert classify(value) is kind


def upsert(intel: IntelStore, *objects: Mapping[str, object], allow_update: bool = True) -> int:
    return intel.upsert({"meta": {"allow_update": allow_update, "confidence": 80}, "objects": list(objects)})


def test_upsert_creates_then_updates_and_per_object_fields_win() -> None:
    intel = store()
    assert (
        upsert(intel, {"srcip": "203.0.113.9", "itype": "mal_ip"}, {"domain": "evil.example", "itype": "c2_domain"})
        == 2
    )
    upsert(intel, {"srcip": "203.0.113.9", "itype": "mal_ip", "confidence": 95, "status": "inactive"})
    assert (intel.created, intel.updated, intel.duplicates_created) == (2, 1, 0)
    ip = next(obj for obj in intel.objects.values() if obj.value == "203.0.113.9")
    assert (ip.attributes.confidence, ip.status) == (95, "inactive")
    assert intel.active == 1


def test_without_allow_update_a_second_object_is_created_and_counted() -> None:
    intel = store()
    upsert(intel, {"value": "evil.example", "itype": "mal_domain"}, allow_update=False)
    upsert(intel, {"value": "evil.example", "itype": "mal_domain"}, allow_update=False)
    upsert(intel, {"value": "evil.example", "itype": "phish_domain"}, allow_update=False)
    assert (len(intel.objects), intel.created, intel.duplicates_created) == (3, 3, 1)


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([{"srcip": "203.0.113.9", "itype": "mal_ip"}, {"srcip": "203.0.113.10"}], "objects[1] has no itype"),
        ([{"srcip": "203.0.113.9", "itype": "evil_ip"}], "objects[0] has an unknown itype"),
        ([{"srcip": "203.0.113.9", "itype": "mal_ip", "confidence": 300}], "objects[0]: confidence"),
        ([{"srcip": "203.0.113.9", "itype": "mal_ip", "status": "gone"}], "objects[0]: status"),
    ],
)
def test_a_bad_object_refuses_the_whole_request_naming_it(objects: list[dict[str, object]], message: str) -> None:
    intel = store()
    with pytest.raises(IntelRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        upsert(intel, *objects)
    assert not intel.objects


def test_values_that_do_not_fit_their_itype_are_silently_ignored() -> None:
    intel = store()
    assert upsert(intel, {"srcip": "evil.example", "itype": "mal_ip"}, {"itype": "mal_domain"}) == 0
    assert (len(intel.objects), intel.ignored) == (0, 2)


def test_more_objects_than_allowed_are_refused() -> None:
    with pytest.raises(IntelRequestError, match="at most 2"):
        upsert(store(max_objects=2), *({"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(3)))


def test_an_import_waits_for_approval_then_upserts() -> None:
    intel = store()
    fields = {"datatext": "203.0.113.9, evil.example\nhttp://evil.example/x junk!!", "ip_mapping": "c2_ip"}
    session = intel.import_datatext(parse_import(fields, NOW))
    assert (session.status, session.num_indicators, session.num_rejected) == ("done", 3, 1)
    assert (intel.pending_approval, len(intel.objects)) == (3, 0)
    intel.approve_all(session.id)
    assert (intel.pending_approval, intel.active, session.status) == (0, 3, "approved")
    assert {obj.itype for obj in intel.objects.values()} == {"c2_ip", "mal_domain", "mal_url"}
    again = intel.import_datatext(parse_import({**fields, "default_state": "active"}, NOW))
    assert again.status == "approved"
    assert (intel.created, intel.updated, len(intel.objects)) == (3, 3, 3)


def test_an_import_that_expired_already_stores_its_objects_inactive() -> None:
    intel = store()
    expired = (NOW - timedelta(days=1)).isoformat()
    fields = {"datatext": "2001:db8::1", "ip_mapping": "mal_ip", "default_state": "active", "expiration_ts": expired}
    intel.import_datatext(parse_import(fields, NOW))
    (obj,) = intel.objects.values()
    assert (obj.itype, obj.status) == ("mal_ipv6", "inactive")


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "https://feed.example/x"},
        {"datatext": "x", "default_state": "maybe"},
        {"datatext": "x", "ip_mapping": "mal_domain"},
        {"datatext": "x", "tags": "not json"},
    ],
)
def test_bad_import_forms_are_refused(fields: dict[str, str]) -> None:
    with pytest.raises(IntelRequestError):
        parse_import(fields, NOW)


def test_search_filters_and_pages() -> None:
    intel = store()
    upsert(intel, *({"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(5)))
    page, total = intel.search({"status": "active"}, limit=2, offset=4)
    assert (len(page), total) == (1, 5)
    assert intel.search({"value": "203.0.113.3"}, 10, 0)[1] == 1
