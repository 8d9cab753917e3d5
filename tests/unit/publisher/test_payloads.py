"""The wire shapes: an import session's multipart fields and a direct upsert's JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.fixtures.publisher import MALICIOUS, MAPPING, WIRE, observable, scored_indicator
from tibridge.common.contracts import ObservableType, Tlp, Verdict
from tibridge.publisher.batching import session_view
from tibridge.publisher.mapping import IntelStatus, intel_objects
from tibridge.publisher.payloads import IMPORT_PATH, UPSERT_PATH, WireOptions, import_request, upsert_request
from tibridge.publisher.settings import IntelClassification

NOW = datetime(2026, 11, 2, 12, 0, 30, tzinfo=UTC)
UNTIL = datetime(2027, 2, 1, 6, 0, tzinfo=UTC)


def test_an_import_session_states_our_classification_and_the_group_fields() -> None:
    (obj,) = intel_objects(
        scored_indicator(observable(ObservableType.IPV6), MALICIOUS, valid_until=UNTIL), MAPPING, NOW
    )
    request = import_request(
        session_view(obj),
        ["2001:db8::7", "2001:db8::8"],
        WireOptions(IntelClassification.PRIVATE, IntelStatus.INACTIVE),
    )
    assert (request.method, request.path, request.objects) == ("POST", IMPORT_PATH, 2)
    assert request.form == {
        "datatext": "2001:db8::7\n2001:db8::8",
        "classification": "private",
        "confidence": "90",
        "source_confidence_weight": "100",
        "threat_type": "malware",
        "severity": "very-high",
        "default_state": "inactive",
        "expiration_ts": "2027-02-02T00:00:00Z",
        "ipv6_mapping": "mal_ipv6",
        "tags": json.dumps(
            [
                {"name": "mdti", "tlp": "amber"},
                {"name": "Microsoft Defender Threat Intelligence", "tlp": "amber"},
                {"name": "Known C2 infrastructure", "tlp": "amber"},
                {"name": "MDTI malicious indicator", "tlp": "amber"},
            ]
        ),
        "reject_benign": "false",
    }
    assert "malicious" not in request.form.values()


def test_an_upsert_carries_per_object_fields_and_allow_update() -> None:
    objects = [
        *intel_objects(scored_indicator(observable(ObservableType.DOMAIN), MALICIOUS, tlp=Tlp.GREEN), MAPPING, NOW),
        *intel_objects(scored_indicator(observable(ObservableType.FILE_HASH), None, confidence=None), MAPPING, NOW),
    ]
    request = upsert_request(objects, WireOptions(IntelClassification.PUBLIC, IntelStatus.INACTIVE))
    assert (request.method, request.path, request.objects, request.form) == ("PATCH", UPSERT_PATH, 2, {})
    assert request.json_body == {
        "meta": {
            "classification": "public",
            "source_confidence_weight": 100,
            "allow_unresolved": True,
            "allow_update": True,
        },
        "objects": [
            {
                "domain": "bad.example.com",
                "itype": "mal_domain",
                "status": "active",
                "expiration_ts": "2027-01-31T12:00:30Z",
                "threat_type": "malware",
                "severity": "very-high",
                "tags": [
                    {"name": "mdti", "tlp": "green"},
                    {"name": "Microsoft Defender Threat Intelligence", "tlp": "green"},
                    {"name": "Known C2 infrastructure", "tlp": "green"},
                    {"name": "MDTI malicious indicator", "tlp": "green"},
                ],
                "confidence": 92,
                "tlp": "green",
            },
            {
                "md5": "d41d8cd98f00b204e9800998ecf8427e",
                "itype": "mal_md5",
                "status": "active",
                "expiration_ts": "2027-01-31T12:00:30Z",
                "threat_type": "malware",
                "severity": "low",
                "tags": [
                    {"name": "mdti", "tlp": "amber"},
                    {"name": "Microsoft Defender Threat Intelligence", "tlp": "amber"},
                ],
                "tlp": "amber",
            },
        ],
    }


def test_an_expiring_upsert_only_touches_the_state() -> None:
    objects = intel_objects(
        scored_indicator(observable(ObservableType.IPV4), None, verdict=Verdict.EXPIRE), MAPPING, NOW
    )
    request = upsert_request(objects, WIRE)
    assert request.json_body is not None
    assert request.json_body["objects"] == [
        {"srcip": "203.0.113.7", "itype": itype, "status": "inactive", "expiration_ts": "2026-11-02T12:00:30Z"}
        for itype in ("mal_ip", "suspicious_ip")
    ]


def test_an_expiring_import_session_states_only_itype_and_expiry() -> None:
    (obj, _) = intel_objects(
        scored_indicator(observable(ObservableType.DOMAIN), None, verdict=Verdict.EXPIRE), MAPPING, NOW
    )
    request = import_request(
        session_view(obj), ["bad.example.com"], WireOptions(IntelClassification.PRIVATE, IntelStatus.ACTIVE)
    )
    assert request.form == {
        "datatext": "bad.example.com",
        "classification": "private",
        "default_state": "active",
        "expiration_ts": "2026-11-02T12:00:00Z",  # an expiry is stated to the minute, never later than now
        "domain_mapping": "mal_domain",
        "reject_benign": "false",
    }


def test_the_dry_run_record_has_no_credentials() -> None:
    (obj,) = intel_objects(scored_indicator(observable(ObservableType.EMAIL)), MAPPING, NOW)
    record = import_request(session_view(obj), ["phish@bad.example.com"], WIRE).record()
    assert set(record) == {"method", "path", "body"}
    assert record["body"]["email_mapping"] == "mal_email"
