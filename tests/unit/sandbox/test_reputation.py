"""The seeded MDTI reputation model."""

from __future__ import annotations

from collections import Counter

import pytest

from tibridge.common.contracts import Classification, Reputation
from tibridge.sandbox.reputation import (
    UNKNOWN_FUTURE_VALUE,
    HostReputation,
    HostRule,
    PinnedReputationsError,
    ReputationModel,
    graph_body,
    has_reputation,
    parse_pinned,
    reputation_for,
)

BANDS = {
    Classification.UNKNOWN: range(0, 25),
    Classification.NEUTRAL: range(25, 50),
    Classification.SUSPICIOUS: range(50, 75),
    Classification.MALICIOUS: range(75, 101),
}
HOSTS = [f"host{i}.example.com" for i in range(4000)]


def test_the_same_seed_gives_the_same_reputation_and_another_seed_another() -> None:
    assert [reputation_for(h, 7) for h in HOSTS[:200]] == [reputation_for(h, 7) for h in HOSTS[:200]]
    assert [reputation_for(h, 7) for h in HOSTS[:200]] != [reputation_for(h, 8) for h in HOSTS[:200]]


def test_scores_sit_in_mdti_bands_and_the_spread_is_realistic() -> None:
    reputations = [reputation_for(h, 7) for h in HOSTS]
    shares = Counter(r.classification if r else "never seen" for r in reputations)
    for reputation in filter(None, reputations):
        if reputation.classification != UNKNOWN_FUTURE_VALUE:
            assert reputation.score in BANDS[Classification(reputation.classification)]
        for rule in reputation.rules:
            assert rule.name
            assert rule.description
    unknown = (shares["never seen"] + shares[Classification.UNKNOWN]) / len(HOSTS)
    assert 0.55 < unknown < 0.65
    assert 0.17 < shares[Classification.NEUTRAL] / len(HOSTS) < 0.23
    assert 0.08 < shares[Classification.SUSPICIOUS] / len(HOSTS) < 0.12
    assert 0.08 < shares[Classification.MALICIOUS] / len(HOSTS) < 0.12
    assert all(r.rules for r in reputations if r and r.classification == Classification.MALICIOUS)


def test_unknown_future_value_is_seeded_in_classifications_and_rule_severities() -> None:
    """external-apis.md §2: Graph documents `unknownFutureValue` for both enums; a client must not fail on it."""
    reputations = [r for r in (reputation_for(h, 7) for h in HOSTS) if r]
    future = [r for r in reputations if r.classification == UNKNOWN_FUTURE_VALUE]
    assert 0.01 < len(future) / len(reputations) < 0.04
    assert all(r.score > 0 for r in future)
    rules = [rule for r in reputations for rule in r.rules]
    assert 0.02 < sum(rule.severity == UNKNOWN_FUTURE_VALUE for rule in rules) / len(rules) < 0.09
    served = graph_body("h.example", future[0])
    assert served["classification"] == UNKNOWN_FUTURE_VALUE


def test_pinned_reputations_take_unknown_future_value_where_graph_documents_it() -> None:
    pinned = parse_pinned(
        {
            "x.example": {
                "score": 80,
                "classification": "unknownFutureValue",
                "rules": [{"name": "R", "severity": "unknownFutureValue"}],
            }
        }
    )
    assert pinned["x.example"] == HostReputation(80, "unknownFutureValue", (HostRule("R", "", "unknownFutureValue"),))
    with pytest.raises(PinnedReputationsError, match="severity"):
        parse_pinned({"x.example": {"score": 80, "classification": "malicious", "rules": [{"severity": "critical"}]}})


def test_unknown_with_score_zero_and_no_rules_counts_as_no_reputation() -> None:
    assert not has_reputation(None)
    assert not has_reputation(Reputation(score=0, classification=Classification.UNKNOWN))
    assert has_reputation(Reputation(score=10, classification=Classification.UNKNOWN))


def test_pinned_values_override_the_model_case_insensitively() -> None:
    pinned = parse_pinned(
        {
            "Evil.Example": {
                "score": 99,
                "classification": "malicious",
                "rules": [{"name": "C2", "severity": "high", "relatedDetailsUrl": "https://x.example/c2"}],
            },
            "8.8.8.8": None,
        }
    )
    model = ReputationModel(7, pinned)
    evil = model.lookup("evil.example")
    assert evil is not None
    assert (evil.score, evil.rules[0].related_details_url) == (99, "https://x.example/c2")
    assert model.lookup("8.8.8.8") is None
    assert model.lookup("other.example") == reputation_for("other.example", 7)
    body = graph_body("evil.example", evil)
    assert body["rules"][0]["relatedDetailsUrl"] == "https://x.example/c2"
    assert body["@odata.type"] == "#microsoft.graph.security.hostReputation"


@pytest.mark.parametrize("raw", [[], {"h": {"score": 101, "classification": "malicious"}}, {"h": "bad"}])
def test_invalid_pinned_reputations_are_refused(raw: object) -> None:
    with pytest.raises(PinnedReputationsError):
        parse_pinned(raw)
