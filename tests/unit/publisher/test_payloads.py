"""The wire shapes (external-apis.md §3): an import session's multipart fields, a direct upsert's JSON, changes
by id, and searches that never carry an indicator value or a credential in the URL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.fixtures.publisher import MALICIOUS, PUBLISHING, observable, scored_indicator
from tibridge.common.contracts import HashAlgorithm, Observable, ObservableType, Tlp
from tibridge.publisher.mapping import Severity, intel_object
from tibridge.publisher.payloads import (
    IMPORT_PATH,
    INTELLIGENCE_PATH,
    Operation,
    Permission,
    SessionProfile,
    deactivate_request,
    import_request,
    owned_search,
    session_objects_search,
    session_request,
    update_request,
    upsert_request,
    whitelist_request,
)
from tibridge.publisher.settings import IntelClassification, PublishingSettings

NOW = datetime(2026, 11, 2, 12, 0, 30, tzinfo=UTC)
UNTIL = datetime(2027, 2, 1, 6, 0, tzinfo=UTC)
PROFILE = SessionProfile(
    threat_type="malware",
    severity=Severity.HIGH,
    confidence=80,
    tlp="amber",
    expiration=UNTIL,
    tags=("tibridge", "mdti"),
    mappings={"ip_mapping": "mal_ip", "domain_mapping": "mal_domain"},
)


def test_an_import_session_states_our_classification_and_the_profile() -> None:
    request = import_request(["2001:db8::7", "203.0.113.9", "bad.example.com"], PROFILE, PUBLISHING)
    assert (request.operation, request.method, request.path, request.objects) == (
        Operation.IMPORT,
        "POST",
        IMPORT_PATH,
        3,
    )
    assert request.form == {
        "datatext": "2001:db8::7\n203.0.113.9\nbad.example.com",
        "classification": "private",
        "default_state": "inactive",
        "confidence": "80",
        "source_confidence_weight": "100",
        "threat_type": "malware",
        "severity": "high",
        "expiration_ts": "2027-02-01T06:00:00Z",
        # IPv6 rides ip_mapping: no source documents an ipv6_mapping (external-apis.md §3).
        "ip_mapping": "mal_ip",
        "domain_mapping": "mal_domain",
        "tags": json.dumps([{"name": "tibridge", "tlp": "amber"}, {"name": "mdti", "tlp": "amber"}]),
        "reject_benign": "false",
    }
    assert request.permission is Permission.IMPORT


def test_auto_approved_sessions_need_approve_import() -> None:
    request = import_request(["bad.example.com"], PROFILE, PublishingSettings(auto_approve=True))
    assert (request.form["default_state"], request.permission) == ("active", Permission.APPROVE_IMPORT)


def test_a_session_without_a_tlp_sends_tags_without_one() -> None:
    profile = SessionProfile(**{**PROFILE.__dict__, "tlp": None, "confidence": None})
    request = import_request(["bad.example.com"], profile, PUBLISHING)
    assert json.loads(request.form["tags"]) == [{"name": "tibridge"}, {"name": "mdti"}]
    assert "confidence" not in request.form


def test_an_upsert_carries_per_object_fields_the_documented_value_keys_and_allow_update() -> None:
    sha1 = Observable(type=ObservableType.FILE_HASH, value="a" * 40, hash_algorithm=HashAlgorithm.SHA1)
    objects = [
        intel_object(scored_indicator(observable(ObservableType.IPV6), MALICIOUS, valid_until=UNTIL), PUBLISHING, NOW),
        intel_object(scored_indicator(sha1, None, confidence=None, tlp=Tlp.GREEN, valid_until=UNTIL), PUBLISHING, NOW),
    ]
    request = upsert_request(objects, PublishingSettings(classification=IntelClassification.PUBLIC))
    assert (request.operation, request.method, request.path, request.objects, request.form) == (
        Operation.UPSERT,
        "PATCH",
        INTELLIGENCE_PATH,
        2,
        {},
    )
    assert request.json_body is not None
    assert request.json_body["meta"] == {
        "classification": "public",
        "source_confidence_weight": 100,
        "allow_unresolved": True,
        "allow_update": True,
    }
    ipv6, digest = request.json_body["objects"]
    assert {key: ipv6[key] for key in ("ipv6", "itype", "confidence", "severity", "tlp", "expiration_ts")} == {
        "ipv6": "2001:db8::7",
        "itype": "mal_ipv6",
        "confidence": 92,
        "severity": "very-high",
        "tlp": "amber",
        "expiration_ts": "2027-02-01T06:00:00Z",
    }
    assert {"srcip", "status"}.isdisjoint(ipv6)
    assert (digest["md5"], digest["subtype"], digest["itype"], digest["tlp"]) == ("a" * 40, "SHA1", "mal_md5", "green")
    assert "confidence" not in digest
    assert {"name": "tibridge", "tlp": "green"} in digest["tags"]
    assert request.permission is Permission.APPROVE_INTEL


def test_changes_by_id_touch_only_what_they_must() -> None:
    deactivate = deactivate_request(4711)
    assert (deactivate.operation, deactivate.method, deactivate.path) == (
        Operation.UPDATE,
        "PATCH",
        "/v2/intelligence/4711/",
    )
    # Expiring touches only the state, so what an analyst added stays.
    assert deactivate.json_body == {"status": "inactive"}
    obj = intel_object(scored_indicator(observable(ObservableType.DOMAIN), valid_until=UNTIL), PUBLISHING, NOW)
    update = update_request(4712, obj)
    assert update.path == "/v2/intelligence/4712/"
    assert update.json_body is not None
    # Only fields a change by id may carry (the sandbox refuses any other one, as ThreatStream would).
    assert set(update.json_body) == {
        "status",
        "itype",
        "threat_type",
        "severity",
        "expiration_ts",
        "tags",
        "confidence",
        "tlp",
    }
    assert update.permission is Permission.APPROVE_INTEL


def test_searches_filter_by_our_tag_update_id_or_session_never_by_value() -> None:
    first = owned_search("tibridge", None, ("active", "falsepos"))
    assert (first.operation, first.method, first.path) == (Operation.SEARCH, "GET", INTELLIGENCE_PATH)
    assert first.params == {
        "tags.name": "tibridge",
        "order_by": "update_id",
        "limit": "1000",
        "status": "active,falsepos",
    }
    assert owned_search("tibridge", 1234).params == {
        "tags.name": "tibridge",
        "order_by": "update_id",
        "limit": "1000",
        "update_id__gt": "1234",
    }
    assert session_objects_search("17", None).params == {
        "import_session_id": "17",
        "order_by": "update_id",
        "limit": "1000",
    }
    assert session_request("17").path == "/v1/importsession/17/"
    assert whitelist_request(2000).params == {"limit": "1000", "offset": "2000"}
    for request in (first, session_request("17"), whitelist_request(0)):
        assert request.permission is None


def test_the_dry_run_record_holds_method_path_query_and_body() -> None:
    record = deactivate_request(9).record()
    assert record == {"method": "PATCH", "path": "/v2/intelligence/9/", "params": {}, "body": {"status": "inactive"}}
