"""Mapping tables: every observable kind by MDTI classification, and every field we derive.

The wire facts are external-apis.md §3: IPv6 under `ipv6` with an `_ipv6` itype, every hash under `md5` with a
`subtype`, only real itypes (no `suspicious_md5`, no unconfirmed `suspicious_ipv6`), TLP as a setting.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.publisher import MALICIOUS, PUBLISHING, SUSPICIOUS, observable, scored_indicator
from tibridge.common.contracts import (
    Classification,
    HashAlgorithm,
    IndicatorScored,
    Observable,
    ObservableType,
    Reputation,
    ReputationRule,
    RuleSeverity,
    Tlp,
)
from tibridge.publisher.mapping import (
    INTEL_KINDS,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MDTI_TAG,
    OUR_ITYPES,
    Severity,
    intel_object,
    itype_for,
    severity_for,
    tag_text,
    wire_tlp,
)
from tibridge.publisher.settings import PublishingSettings, TlpSpelling
from tibridge.sandbox.vocabulary import ITYPES, VALUE_FIELDS, IntelKind

NOW = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)

# Columns: malicious, suspicious, neutral, unknown, unknownFutureValue, no reputation.
CLASSIFICATIONS: list[Classification | None] = [
    Classification.MALICIOUS,
    Classification.SUSPICIOUS,
    Classification.NEUTRAL,
    Classification.UNKNOWN,
    Classification.UNKNOWN_FUTURE_VALUE,
    None,
]
ITYPE_TABLE: dict[ObservableType, list[str]] = {
    ObservableType.IPV4: ["mal_ip", *["suspicious_ip"] * 4, "mal_ip"],
    # `suspicious_ipv6` is listed by one client only, unconfirmed: IPv6 is always `mal_ipv6`.
    ObservableType.IPV6: ["mal_ipv6"] * 6,
    ObservableType.DOMAIN: ["mal_domain", *["suspicious_domain"] * 4, "mal_domain"],
    ObservableType.URL: ["mal_url", *["suspicious_url"] * 4, "mal_url"],
    # ThreatStream has no `suspicious_md5`.
    ObservableType.FILE_HASH: ["mal_md5"] * 6,
    ObservableType.EMAIL: ["mal_email", *["suspicious_email"] * 4, "mal_email"],
}


def reputation_of(classification: Classification | None) -> Reputation | None:
    return None if classification is None else Reputation(score=80, classification=classification)


@pytest.mark.parametrize(
    ("kind", "classification", "expected"),
    [
        (kind, classification, itypes[column])
        for kind, itypes in ITYPE_TABLE.items()
        for column, classification in enumerate(CLASSIFICATIONS)
    ],
)
def test_itype_for_every_kind_and_classification(
    kind: ObservableType, classification: Classification | None, expected: str
) -> None:
    assert itype_for(observable(kind), reputation_of(classification)) == expected


def test_every_itype_we_can_publish_is_a_real_threatstream_itype_of_its_kind() -> None:
    """The sandbox's vocabulary is the one Anomali's maintained consumers map (external-apis.md §3)."""
    kinds = {"_ip": IntelKind.IP, "_ipv6": IntelKind.IPV6, "_domain": IntelKind.DOMAIN, "_url": IntelKind.URL}
    kinds |= {"_md5": IntelKind.HASH, "_email": IntelKind.EMAIL}
    for itype in OUR_ITYPES:
        suffix = itype[itype.index("_") :]
        assert ITYPES.get(itype) is kinds[suffix], itype
    assert "suspicious_md5" not in OUR_ITYPES
    assert "suspicious_ipv6" not in OUR_ITYPES


def test_value_keys_are_the_documented_ones() -> None:
    """IPv4 srcip, IPv6 ipv6, domain, url, email, and every hash kind under md5 (external-apis.md §3)."""
    keys = {kind: INTEL_KINDS[kind].value_field for kind in ObservableType}
    assert keys == {
        ObservableType.IPV4: "srcip",
        ObservableType.IPV6: "ipv6",
        ObservableType.DOMAIN: "domain",
        ObservableType.URL: "url",
        ObservableType.FILE_HASH: "md5",
        ObservableType.EMAIL: "email",
    }
    assert set(keys.values()) == set(VALUE_FIELDS)


def test_imports_name_only_the_documented_mapping_fields_and_ipv6_rides_ip_mapping() -> None:
    fields = {kind: INTEL_KINDS[kind].mapping_field for kind in ObservableType}
    assert set(fields.values()) == {"ip_mapping", "domain_mapping", "url_mapping", "email_mapping", "md5_mapping"}
    ipv6 = INTEL_KINDS[ObservableType.IPV6]
    # ip_mapping names the IPv4 itype; ThreatStream gives IPv6 its `_ipv6` form.
    assert (ipv6.mapping_field, ipv6.mapping_value("mal_ipv6")) == ("ip_mapping", "mal_ip")
    assert INTEL_KINDS[ObservableType.IPV4].mapping_value("suspicious_ip") == "suspicious_ip"


@pytest.mark.parametrize(
    ("algorithm", "subtype"),
    [
        (HashAlgorithm.MD5, "MD5"),
        (HashAlgorithm.SHA1, "SHA1"),
        (HashAlgorithm.SHA256, "SHA256"),
        (HashAlgorithm.SHA512, "SHA512"),
    ],
)
def test_every_hash_algorithm_is_filed_under_md5_with_its_subtype(algorithm: HashAlgorithm, subtype: str) -> None:
    digest = Observable(type=ObservableType.FILE_HASH, value="a" * algorithm.hex_length, hash_algorithm=algorithm)
    obj = intel_object(scored_indicator(digest, None), PUBLISHING, NOW)
    assert (obj.itype, obj.kind.value_field, obj.subtype) == ("mal_md5", "md5", subtype)


def test_a_published_observable_carries_score_severity_tags_tlp_and_expiry() -> None:
    valid_until = datetime(2027, 1, 31, tzinfo=UTC)
    scored = scored_indicator(observable(ObservableType.IPV4), MALICIOUS, valid_until=valid_until)
    obj = intel_object(scored, PUBLISHING, NOW)
    assert (obj.itype, obj.threat_type, obj.confidence, obj.severity) == ("mal_ip", "malware", 92, Severity.VERY_HIGH)
    assert obj.tags[:3] == ("tibridge", MDTI_TAG, "Microsoft Threat Intelligence")
    assert "Known C2 infrastructure" in obj.tags
    assert (obj.tlp, obj.expiration) == ("amber", valid_until)


def test_no_valid_until_means_the_default_lifetime() -> None:
    obj = intel_object(scored_indicator(observable(ObservableType.DOMAIN)), PUBLISHING, NOW)
    assert obj.expiration == NOW + timedelta(days=90)


@pytest.mark.parametrize(
    ("valid_until", "expected"),
    [
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), NOW + timedelta(days=3650)),  # no overflow, a sane date
        (datetime(1, 1, 1, tzinfo=UTC), NOW + timedelta(hours=1)),  # an import refuses a past expiry
        (NOW - timedelta(minutes=5), NOW + timedelta(hours=1)),
    ],
)
def test_expiries_are_clamped_to_what_threatstream_takes(valid_until: datetime, expected: datetime) -> None:
    obj = intel_object(scored_indicator(1, valid_until=valid_until), PUBLISHING, NOW)
    assert obj.expiration == expected


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        # The default cannot get anything refused: only the levels both spellings share.
        (TlpSpelling.SAFE, [None, "green", "amber", "red", "red"]),
        (TlpSpelling.TLP2, ["clear", "green", "amber", "amber+strict", "red"]),
        (TlpSpelling.TLP1, ["white", "green", "amber", "red", "red"]),
    ],
)
def test_tlp_spelling_is_a_setting(spelling: TlpSpelling, expected: list[str | None]) -> None:
    levels = [Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED]
    assert [wire_tlp(level, spelling) for level in levels] == expected
    assert wire_tlp(None, spelling) is None


def test_the_default_spelling_sends_nothing_outside_green_amber_red() -> None:
    assert PublishingSettings().tlp_spelling is TlpSpelling.SAFE
    assert {wire_tlp(level, TlpSpelling.SAFE) for level in Tlp} <= {None, "green", "amber", "red"}


@pytest.mark.parametrize(
    ("score", "rules", "expected"),
    [
        (95, (), Severity.VERY_HIGH),
        (80, (), Severity.HIGH),
        (55, (), Severity.MEDIUM),
        (10, (), Severity.LOW),
        (None, (), Severity.LOW),
        (55, (RuleSeverity.HIGH,), Severity.HIGH),
        (95, (RuleSeverity.LOW,), Severity.VERY_HIGH),
        (30, (RuleSeverity.UNKNOWN, RuleSeverity.UNKNOWN_FUTURE_VALUE), Severity.LOW),
    ],
)
def test_severity_is_the_higher_of_score_band_and_rules(
    score: int | None, rules: tuple[RuleSeverity, ...], expected: Severity
) -> None:
    assert severity_for(score, [ReputationRule(name=f"r{n}", severity=s) for n, s in enumerate(rules)]) == expected


def with_fields(**fields: object) -> IndicatorScored:
    scored = scored_indicator(observable(ObservableType.DOMAIN), SUSPICIOUS)
    return scored.model_copy(update={"indicator": scored.indicator.model_copy(update=fields)})


def test_the_contract_fields_an_analyst_filters_by_become_tags() -> None:
    """Issue 14 item 6: source system, indicator types, labels and upstream tags are ThreatStream tags."""
    scored = with_fields(
        source_system="Premium Microsoft Defender Threat Intelligence",
        threat_types=("malicious-activity",),
        labels=("Phishing", "phishing"),
        tags=("Storm-0558",),
    )
    tags = intel_object(scored, PUBLISHING, NOW).tags
    assert tags == (
        "tibridge",
        "mdti",
        "Microsoft Threat Intelligence",
        "Premium Microsoft Defender Threat Intelligence",
        "malicious-activity",
        "Phishing",  # one tag per name, whatever its case
        "Storm-0558",
        "Open proxy",
    )


def test_tags_are_bounded_printable_and_short() -> None:
    hostile = ("\u202eevil\u0000 label\u200b", "x" * 10_000, *(f"label {n}" for n in range(10_000)))
    tags = intel_object(with_fields(labels=hostile), PUBLISHING, NOW).tags
    assert len(tags) == MAX_TAGS
    assert all(len(tag) <= MAX_TAG_LENGTH for tag in tags)
    assert "evil label" in tags
    assert tag_text("a\u00a0\tb") == "a b"


def test_the_owner_and_source_tags_follow_the_settings() -> None:
    publishing = PublishingSettings(owner_tag="tibridge-prod", source_name="MSTI feed")
    obj = intel_object(scored_indicator(1), publishing, NOW)
    assert obj.tags[:3] == ("tibridge-prod", MDTI_TAG, "MSTI feed")
