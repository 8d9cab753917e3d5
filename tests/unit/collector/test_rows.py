"""Rows → IndicatorCollected: fields, lifecycle, defensive parsing, legacy rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.collector import ANCHOR, MDTI, new_row
from tibridge.collector.kql import IndicatorTable
from tibridge.collector.rows import (
    EARLIEST_DATE,
    LATEST_DATE,
    MAX_DESCRIPTION_LENGTH,
    MAX_DYNAMIC_LENGTH,
    MAX_LIST_ITEMS,
    RowReader,
    RowRejected,
)
from tibridge.common.contracts import (
    HashAlgorithm,
    InactiveReason,
    IndicatorCollected,
    Observable,
    ObservableType,
    RejectionReason,
    Tlp,
)

NEW = RowReader(IndicatorTable.NEW, reject_non_global=True)
LEGACY = RowReader(IndicatorTable.LEGACY, reject_non_global=True)
SEEN = ANCHOR - timedelta(hours=3)
AMBER_MARKING = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"


def read(row: dict[str, Any], reader: RowReader = NEW) -> IndicatorCollected:
    result = reader.read(row, ANCHOR)
    assert isinstance(result, IndicatorCollected), result
    return result


def test_a_full_row_becomes_an_indicator() -> None:
    data = {
        "description": "C2 infrastructure",
        "labels": ["C2", "Botnet", 7],
        "indicator_types": ["malicious-activity"],
        "object_marking_refs": [AMBER_MARKING],
    }
    row = new_row(
        "indicator--1",
        SEEN,
        key="domain-name:value",
        value="Evil[.]Example.COM",
        Confidence=91,
        Tags=json.dumps(["Phishing"]),
        Data=json.dumps(data),
        AdditionalFields=json.dumps({"TLPLevel": "Red"}),
    )
    indicator = read(row)
    assert indicator.observable == Observable(type=ObservableType.DOMAIN, value="evil.example.com")
    assert indicator.indicator_id == "indicator--1"
    assert indicator.source_system == MDTI
    assert indicator.time_generated == SEEN
    assert indicator.confidence == 91
    assert indicator.valid_from == SEEN - timedelta(days=1)
    assert indicator.valid_until == SEEN + timedelta(days=90)
    assert indicator.upstream_version == (SEEN - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert indicator.active
    assert indicator.inactive_reason is None
    assert indicator.labels == ("C2", "Botnet")
    assert indicator.tags == ("Phishing",)
    assert indicator.threat_types == ("malicious-activity",)
    assert indicator.description == "C2 infrastructure"
    assert indicator.tlp is Tlp.RED  # AdditionalFields wins over the marking


def test_tlp_falls_back_to_the_stix_marking_and_understands_tlp_prefixes() -> None:
    marked = new_row("i", SEEN, Data=json.dumps({"object_marking_refs": ["x", AMBER_MARKING]}))
    assert read(marked).tlp is Tlp.AMBER
    assert read(new_row("i", SEEN, AdditionalFields='{"TLPLevel": "TLP:CLEAR"}')).tlp is Tlp.CLEAR
    assert read(new_row("i", SEEN, AdditionalFields='{"TLPLevel": "purple"}')).tlp is None


def test_the_version_falls_back_to_time_generated_without_modified() -> None:
    indicator = read(new_row("i", SEEN, Modified=None))
    assert indicator.upstream_version == SEEN.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"Revoked": True, "IsDeleted": True, "IsActive": False}, InactiveReason.REVOKED),
        ({"IsDeleted": True, "IsActive": False}, InactiveReason.DELETED),
        ({"IsActive": False, "ValidUntil": ANCHOR - timedelta(days=1)}, InactiveReason.INACTIVE),
        ({"ValidUntil": ANCHOR - timedelta(seconds=1)}, InactiveReason.EXPIRED),
    ],
)
def test_lifecycle_flags_in_order_of_precedence(columns: dict[str, Any], reason: InactiveReason) -> None:
    indicator = read(new_row("i", SEEN, **columns))
    assert (indicator.active, indicator.inactive_reason) == (False, reason)


def test_no_valid_until_means_no_expiry() -> None:
    assert read(new_row("i", SEEN, ValidUntil=None)).active


@pytest.mark.parametrize(
    "columns",
    [
        {"Data": "{not json", "Tags": "also not json", "AdditionalFields": "[1, 2]"},
        {"Data": None, "Tags": None, "AdditionalFields": None, "Confidence": None},
        {"Data": '"a string"', "Tags": '{"a": 1}', "Confidence": 250},
        {"Data": {"labels": "single"}, "Confidence": float("nan"), "IsActive": "yes?"},
    ],
)
def test_malformed_optional_columns_only_leave_fields_empty(columns: dict[str, Any]) -> None:
    indicator = read(new_row("i", SEEN, **columns))
    assert indicator.observable.value == "93.184.216.34"
    assert indicator.confidence is None or 0 <= indicator.confidence <= 100
    assert indicator.active


def test_dynamic_columns_may_also_arrive_parsed() -> None:
    indicator = read(
        new_row("i", SEEN, Tags=["A", "B"], Data={"labels": ["L"]}, AdditionalFields={"TLPLevel": "green"})
    )
    assert (indicator.tags, indicator.labels, indicator.tlp) == (("A", "B"), ("L",), Tlp.GREEN)


def test_datetimes_may_arrive_as_text_when_the_sdk_could_not_parse_them() -> None:
    indicator = read(new_row("i", SEEN, TimeGenerated="2026-11-14T21:00:00.1234567Z", ValidUntil="garbage"))
    assert indicator.time_generated == datetime(2026, 11, 14, 21, 0, 0, 123456, tzinfo=UTC)
    assert indicator.valid_until is None


@pytest.mark.parametrize(
    ("columns", "reason"),
    [
        ({"ObservableValue": "10.0.0.1"}, RejectionReason.NON_GLOBAL_IP),
        ({"ObservableValue": "256.0.0.1"}, RejectionReason.INVALID_VALUE),
        ({"ObservableValue": ""}, RejectionReason.INVALID_VALUE),
        ({"ObservableKey": "mac-addr:value"}, RejectionReason.UNSUPPORTED_TYPE),
        (
            {"ObservableKey": "", "ObservableValue": "", "Pattern": "[a:b = '1'] OR [c:d = '2']"},
            RejectionReason.UNPARSED_PATTERN,
        ),
        (
            {"ObservableKey": "", "ObservableValue": "", "Pattern": "[x509-certificate:serial_number = '01']"},
            RejectionReason.UNSUPPORTED_TYPE,
        ),
        ({"TimeGenerated": None}, RejectionReason.INVALID_VALUE),
    ],
)
def test_only_the_observable_rejects_a_row(columns: dict[str, Any], reason: RejectionReason) -> None:
    assert NEW.read(new_row("indicator--9", SEEN, **columns), ANCHOR) == RowRejected("indicator--9", reason)


def test_a_row_with_only_a_pattern_is_recovered() -> None:
    row = new_row("i", SEEN, key="", value="", Pattern="[file:hashes.'SHA-1' = '" + "AB" * 20 + "']")
    assert read(row).observable == Observable(
        type=ObservableType.FILE_HASH, value="ab" * 20, hash_algorithm=HashAlgorithm.SHA1
    )


def test_non_global_addresses_are_kept_when_the_setting_is_off() -> None:
    reader = RowReader(IndicatorTable.NEW, reject_non_global=False)
    assert read(new_row("i", SEEN, value="192.168.1.1"), reader).observable.value == "192.168.1.1"


def legacy_row(**columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(
        ("NetworkIP", "NetworkSourceIP", "NetworkDestinationIP", "DomainName", "Url", "FileHashType",
         "FileHashValue", "EmailSenderAddress", "ThreatType", "Tags", "Description", "TrafficLightProtocolLevel"),
        "",
    )  # fmt: skip
    row.update(
        TimeGenerated=SEEN,
        IndicatorId="legacy-1",
        ConfidenceScore=66.6,
        Active=True,
        ExpirationDateTime=ANCHOR + timedelta(days=5),
        SourceSystem=MDTI,
    )
    row.update(columns)
    return row


@pytest.mark.parametrize(
    ("columns", "observable"),
    [
        ({"NetworkSourceIP": "8.8.8.8"}, Observable(type=ObservableType.IPV4, value="8.8.8.8")),
        (
            {"Url": "HTTP://Evil.com", "DomainName": "evil.com"},
            Observable(type=ObservableType.URL, value="http://evil.com/"),
        ),
        (
            {"FileHashType": "SHA256", "FileHashValue": "A" * 64},
            Observable(type=ObservableType.FILE_HASH, value="a" * 64, hash_algorithm=HashAlgorithm.SHA256),
        ),
        ({"EmailSenderAddress": "x@Evil.com"}, Observable(type=ObservableType.EMAIL, value="x@evil.com")),
    ],
)
def test_legacy_rows_take_the_observable_from_its_column(columns: dict[str, Any], observable: Observable) -> None:
    indicator = read(legacy_row(**columns), LEGACY)
    assert indicator.observable == observable
    assert indicator.indicator_id == "legacy-1"
    assert indicator.confidence == 67


def test_legacy_fields_and_lifecycle() -> None:
    indicator = read(
        legacy_row(
            DomainName="evil.com",
            Active=False,
            Tags='["C2"]',
            ThreatType="Botnet",
            Description="d",
            TrafficLightProtocolLevel="Amber",
        ),
        LEGACY,
    )
    assert (indicator.active, indicator.inactive_reason) == (False, InactiveReason.INACTIVE)
    assert (indicator.tags, indicator.threat_types, indicator.description, indicator.tlp) == (
        ("C2",),
        ("Botnet",),
        "d",
        Tlp.AMBER,
    )
    expired = read(legacy_row(DomainName="evil.com", ExpirationDateTime=ANCHOR - timedelta(days=1)), LEGACY)
    assert expired.inactive_reason is InactiveReason.EXPIRED


def test_legacy_rows_without_an_observable_or_with_an_unknown_hash_are_unsupported() -> None:
    assert LEGACY.read(legacy_row(), ANCHOR) == RowRejected("legacy-1", RejectionReason.UNSUPPORTED_TYPE)
    unknown_hash = legacy_row(FileHashType="SHA3-256", FileHashValue="ab" * 32)
    assert LEGACY.read(unknown_hash, ANCHOR) == RowRejected("legacy-1", RejectionReason.UNSUPPORTED_TYPE)


# --- hostile rows (issue 13): bounded work, dates every system downstream accepts ------------------------------


@pytest.mark.parametrize(
    ("text", "clamped"),
    [
        ("9999-12-31T23:59:59.9999999Z", LATEST_DATE),
        ("9999-12-31T23:00:00-05:00", LATEST_DATE),  # past the calendar's end once in UTC
        ("0001-01-01T00:00:00Z", EARLIEST_DATE),
        ("0001-01-01T00:30:00+01:00", EARLIEST_DATE),  # before its start once in UTC
        ("1969-12-31T23:59:59Z", EARLIEST_DATE),
    ],
)
def test_dates_are_clamped_to_what_every_system_downstream_accepts(text: str, clamped: datetime) -> None:
    indicator = read(new_row("indicator--1", SEEN, ValidUntil=text, ValidFrom=text, Modified=text))
    assert indicator.valid_until == clamped
    assert indicator.valid_from == clamped
    assert indicator.upstream_version == clamped.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_year_9999_row_never_expires_and_the_year_1_row_has_expired() -> None:
    assert read(new_row("forever", SEEN, ValidUntil="9999-12-31T23:59:59Z")).active
    ancient = read(new_row("ancient", SEEN, ValidUntil="0001-01-01T00:00:00Z"))
    assert ancient.inactive_reason is InactiveReason.EXPIRED


def test_an_indicator_id_longer_than_any_real_one_is_refused_and_logged_short() -> None:
    rejected = NEW.read(new_row("i" * 100_000, SEEN), ANCHOR)
    assert isinstance(rejected, RowRejected)
    assert rejected.reason is RejectionReason.INVALID_VALUE
    assert len(rejected.indicator_id) < 100


def test_columns_too_big_to_be_real_leave_their_fields_empty() -> None:
    data = {"description": "x", "labels": ["y"] * 10, "pad": "z" * MAX_DYNAMIC_LENGTH}
    indicator = read(
        new_row(
            "indicator--1",
            SEEN,
            Data=json.dumps(data),
            Tags="[" * 100_000 + "]" * 100_000,  # past the size limit
            AdditionalFields="[" * 50_000 + "]" * 50_000,
            SourceSystem="s" * 10_000,
        )
    )
    assert (indicator.description, indicator.labels, indicator.tags, indicator.tlp) == (None, (), (), None)
    assert indicator.source_system == ""


def test_json_nested_deeper_than_the_parser_recurses_is_no_crash() -> None:
    deep = "[" * 20_000 + "]" * 20_000  # within the size limit, past the decoder's recursion limit
    assert len(deep) < MAX_DYNAMIC_LENGTH
    indicator = read(new_row("indicator--1", SEEN, Data=deep, Tags=deep))
    assert (indicator.description, indicator.tags) == (None, ())


def test_texts_and_lists_are_cut_to_what_sentinel_keeps() -> None:
    data = {"description": "d" * 5000, "labels": [f"l{n}" for n in range(500)] + ["x" * 1000]}
    indicator = read(new_row("indicator--1", SEEN, Data=json.dumps(data), Tags=json.dumps(["t" * 300, "ok"])))
    assert indicator.description == "d" * MAX_DESCRIPTION_LENGTH
    assert indicator.labels == tuple(f"l{n}" for n in range(MAX_LIST_ITEMS))
    assert indicator.tags == ("ok",)


def test_the_nested_defang_row_is_rejected_with_a_reason() -> None:
    hostile = "evil" + "[" * 250_000 + "." + "]" * 250_000 + "x.com"
    rejected = NEW.read(new_row("nested", SEEN, key="domain-name:value", value=hostile, Pattern=""), ANCHOR)
    assert rejected == RowRejected("nested", RejectionReason.INVALID_VALUE)


def test_the_markup_email_row_is_rejected_with_a_reason() -> None:
    row = new_row("xss", SEEN, key="email-addr:value", value="<script>alert(1)</script>@evil-xss.com")
    assert NEW.read(row, ANCHOR) == RowRejected("xss", RejectionReason.INVALID_VALUE)
