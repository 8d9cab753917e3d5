"""Mapping tables: every observable kind by MDTI classification, and every field we derive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.publisher import MALICIOUS, SUSPICIOUS, observable, scored_indicator
from tibridge.common.contracts import (
    Classification,
    HashAlgorithm,
    Observable,
    ObservableType,
    Reputation,
    ReputationRule,
    RuleSeverity,
    Tlp,
    Verdict,
)
from tibridge.publisher.mapping import (
    MAX_RULE_TAGS,
    MAX_TAG_LENGTH,
    IntelStatus,
    MappingPolicy,
    Severity,
    intel_objects,
    itype_for,
    severity_for,
    tags_for,
)

NOW = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)
POLICY = MappingPolicy(default_lifetime=timedelta(days=90), source_name="MDTI feed")

# Columns: malicious, suspicious, neutral, unknown, unknownFutureValue, no reputation.
CLASSIFICATIONS: list[Classification | None] = [
    Classification.MALICIOUS,
    Classification.SUSPICIOUS,
    Classification.NEUTRAL,
    Classification.UNKNOWN,
    Classification.UNKNOWN_FUTURE_VALUE,
    None,
]
ITYPES: dict[ObservableType, list[str]] = {
    ObservableType.IPV4: ["mal_ip", *["suspicious_ip"] * 4, "mal_ip"],
    ObservableType.IPV6: ["mal_ipv6", *["suspicious_ipv6"] * 4, "mal_ipv6"],
    ObservableType.DOMAIN: ["mal_domain", *["suspicious_domain"] * 4, "mal_domain"],
    ObservableType.URL: ["mal_url", *["suspicious_url"] * 4, "mal_url"],
    ObservableType.FILE_HASH: ["mal_md5"] * 6,
    ObservableType.EMAIL: ["mal_email"] * 6,
}


def reputation_of(classification: Classification | None) -> Reputation | None:
    return None if classification is None else Reputation(score=80, classification=classification)


@pytest.mark.parametrize(
    ("kind", "classification", "expected"),
    [
        (kind, classification, itypes[column])
        for kind, itypes in ITYPES.items()
        for column, classification in enumerate(CLASSIFICATIONS)
    ],
)
def test_itype_for_every_kind_and_classification(
    kind: ObservableType, classification: Classification | None, expected: str
) -> None:
    assert itype_for(observable(kind), reputation_of(classification)) == expected


@pytest.mark.parametrize("algorithm", list(HashAlgorithm))
def test_every_hash_algorithm_is_filed_under_md5_itypes(algorithm: HashAlgorithm) -> None:
    length = algorithm.hex_length
    digest = Observable(type=ObservableType.FILE_HASH, value="a" * length, hash_algorithm=algorithm)
    (obj,) = intel_objects(scored_indicator(digest, None), POLICY, NOW)
    assert (obj.itype, obj.kind.value_field, obj.kind.import_mapping_field) == ("mal_md5", "md5", "md5_mapping")


@pytest.mark.parametrize(
    ("score", "rules", "expected"),
    [
        (None, [], Severity.LOW),
        (10, [], Severity.LOW),
        (49, [], Severity.LOW),
        (50, [], Severity.MEDIUM),
        (74, [], Severity.MEDIUM),
        (75, [], Severity.HIGH),
        (89, [], Severity.HIGH),
        (90, [], Severity.VERY_HIGH),
        (100, [], Severity.VERY_HIGH),
        (30, [RuleSeverity.HIGH], Severity.HIGH),
        (30, [RuleSeverity.LOW, RuleSeverity.MEDIUM], Severity.MEDIUM),
        (80, [RuleSeverity.LOW], Severity.HIGH),
        (95, [RuleSeverity.HIGH], Severity.VERY_HIGH),
        (30, [RuleSeverity.UNKNOWN], Severity.LOW),
    ],
)
def test_severity_is_the_higher_of_score_band_and_rules(
    score: int | None, rules: list[RuleSeverity], expected: Severity
) -> None:
    assert severity_for(score, [ReputationRule(name=f"r{i}", severity=s) for i, s in enumerate(rules)]) == expected


def test_a_published_indicator_maps_every_field() -> None:
    valid_until = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    indicator = scored_indicator(observable(ObservableType.DOMAIN), MALICIOUS, tlp=Tlp.RED, valid_until=valid_until)
    (obj,) = intel_objects(indicator, POLICY, NOW)
    assert obj.itype == "mal_domain"
    assert obj.threat_type == "malware"
    assert obj.status is IntelStatus.ACTIVE
    assert obj.confidence == 92  # the MDTI score, not the indicator's 70
    assert obj.severity is Severity.VERY_HIGH
    assert obj.tlp is Tlp.RED
    assert obj.expiration == valid_until
    assert [tag.to_json() for tag in obj.tags] == [
        {"name": "mdti", "tlp": "red"},
        {"name": "MDTI feed", "tlp": "red"},
        {"name": "Known C2 infrastructure", "tlp": "red"},
        {"name": "MDTI malicious indicator", "tlp": "red"},
    ]


def test_a_suspicious_host_is_graded_down() -> None:
    (obj,) = intel_objects(scored_indicator(observable(ObservableType.IPV4), SUSPICIOUS), POLICY, NOW)
    assert (obj.itype, obj.threat_type, obj.confidence, obj.severity) == (
        "suspicious_ip",
        "suspicious",
        62,
        Severity.MEDIUM,
    )


def test_without_reputation_the_indicator_confidence_and_default_lifetime_apply() -> None:
    indicator = scored_indicator(observable(ObservableType.URL), None, confidence=100, tlp=None)
    (obj,) = intel_objects(indicator, POLICY, NOW)
    assert (obj.itype, obj.confidence, obj.severity) == ("mal_url", 100, Severity.VERY_HIGH)
    assert obj.expiration == NOW + timedelta(days=90)
    assert [tag.to_json() for tag in obj.tags] == [{"name": "mdti"}, {"name": "MDTI feed"}]


def test_an_expire_verdict_without_reputation_expires_every_itype_we_could_have_published() -> None:
    indicator = scored_indicator(observable(ObservableType.IPV6), None, verdict=Verdict.EXPIRE)
    objects = intel_objects(indicator, POLICY, NOW)
    assert [obj.itype for obj in objects] == ["mal_ipv6", "suspicious_ipv6"]
    assert all(obj.status is IntelStatus.INACTIVE and obj.expiration == NOW for obj in objects)


def test_an_expire_verdict_of_an_ungraded_kind_expires_its_one_itype() -> None:
    indicator = scored_indicator(observable(ObservableType.EMAIL), None, verdict=Verdict.EXPIRE)
    assert [obj.itype for obj in intel_objects(indicator, POLICY, NOW)] == ["mal_email"]


def test_rule_tags_are_short_unique_bounded_and_most_severe_first() -> None:
    rules = (
        ReputationRule(name="low " + "x" * 100, severity=RuleSeverity.LOW),
        ReputationRule(name="  spaced \n  name ", severity=RuleSeverity.HIGH),
        *(ReputationRule(name=f"high {i} " + "y" * 60, severity=RuleSeverity.HIGH) for i in range(12)),
        ReputationRule(name="high 0 " + "y" * 60, severity=RuleSeverity.HIGH),
    )
    reputation = Reputation(score=90, classification=Classification.MALICIOUS, rules=rules)
    indicator = scored_indicator(observable(ObservableType.IPV4), reputation)
    names = [tag.name for tag in tags_for(indicator, POLICY)]
    assert names[:2] == ["mdti", "MDTI feed"]
    assert len(names) == 2 + MAX_RULE_TAGS
    assert len(set(names)) == len(names)
    assert all(len(name) <= MAX_TAG_LENGTH for name in names)
    assert not any(name.startswith("low") for name in names)
    assert "spaced name" in names
