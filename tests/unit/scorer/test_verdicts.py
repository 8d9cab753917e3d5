"""Every branch of the verdict rules."""

from __future__ import annotations

import pytest

from tests.fixtures.scorer import MALICIOUS, SUSPICIOUS, indicator
from tibridge.common.contracts import (
    Classification,
    DropReason,
    InactiveReason,
    ObservableType,
    Reputation,
    Verdict,
)
from tibridge.scorer.settings import ScoringSettings, UnscorableHandling
from tibridge.scorer.verdicts import SCORE_AT_OR_ABOVE_THRESHOLD, UNSCORABLE_FORWARDED, decide, needs_lookup

DEFAULT = ScoringSettings()


def test_a_score_at_the_threshold_is_published_with_its_reputation() -> None:
    at_threshold = Reputation(score=75, classification=Classification.MALICIOUS)
    scored = decide(indicator("evil.example"), at_threshold, DEFAULT)
    assert (scored.verdict, scored.reason, scored.reputation) == (
        Verdict.PUBLISH,
        SCORE_AT_OR_ABOVE_THRESHOLD,
        at_threshold,
    )


def test_a_score_below_the_threshold_is_dropped_but_keeps_its_reputation() -> None:
    scored = decide(indicator("grey.example"), SUSPICIOUS, ScoringSettings(threshold=61))
    assert (scored.verdict, scored.reason, scored.reputation) == (Verdict.DROP, DropReason.BELOW_THRESHOLD, SUSPICIOUS)


def test_the_threshold_is_a_setting() -> None:
    assert decide(indicator("grey.example"), SUSPICIOUS, ScoringSettings(threshold=60)).verdict is Verdict.PUBLISH


def test_no_reputation_is_dropped() -> None:
    scored = decide(indicator("198.51.100.7", ObservableType.IPV4), None, DEFAULT)
    assert (scored.verdict, scored.reason, scored.reputation) == (Verdict.DROP, DropReason.NO_REPUTATION, None)


def test_a_classification_outside_the_allow_list_is_dropped_even_above_the_threshold() -> None:
    rules = ScoringSettings(threshold=50, allowed_classifications=frozenset({Classification.MALICIOUS}))
    scored = decide(indicator("grey.example"), SUSPICIOUS, rules)
    assert (scored.verdict, scored.reason) == (Verdict.DROP, DropReason.CLASSIFICATION_NOT_ALLOWED)
    assert decide(indicator("evil.example"), MALICIOUS, rules).verdict is Verdict.PUBLISH


@pytest.mark.parametrize("kind", [ObservableType.URL, ObservableType.FILE_HASH, ObservableType.EMAIL])
def test_unscorable_types_are_dropped_by_default_without_a_lookup(kind: ObservableType) -> None:
    item = indicator("a" * 64 if kind is ObservableType.FILE_HASH else "x@y.example", kind)
    assert not needs_lookup(item)
    scored = decide(item, None, DEFAULT)
    assert (scored.verdict, scored.reason) == (Verdict.DROP, DropReason.UNSCORABLE_TYPE)


def test_unscorable_types_can_be_forwarded_with_a_fixed_confidence() -> None:
    rules = ScoringSettings(unscorable=UnscorableHandling.FORWARD, unscorable_confidence=80)
    scored = decide(indicator("https://evil.example/x", ObservableType.URL, confidence=10), None, rules)
    assert (scored.verdict, scored.reason, scored.reputation) == (Verdict.PUBLISH, UNSCORABLE_FORWARDED, None)
    assert scored.indicator.confidence == 80


@pytest.mark.parametrize("reason", list(InactiveReason))
def test_inactive_indicators_expire_with_their_reason_and_need_no_lookup(reason: InactiveReason) -> None:
    item = indicator("evil.example", inactive=reason)
    assert not needs_lookup(item)
    scored = decide(item, None, DEFAULT)
    assert (scored.verdict, scored.reason, scored.reputation) == (Verdict.EXPIRE, str(reason), None)


def test_inactive_unscorable_indicators_expire_too() -> None:
    scored = decide(
        indicator("https://evil.example/x", ObservableType.URL, inactive=InactiveReason.REVOKED), None, DEFAULT
    )
    assert scored.verdict is Verdict.EXPIRE


@pytest.mark.parametrize("kind", [ObservableType.IPV4, ObservableType.IPV6, ObservableType.DOMAIN])
def test_active_ips_and_domains_need_a_lookup(kind: ObservableType) -> None:
    assert needs_lookup(indicator("v", kind))
