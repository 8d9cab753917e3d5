"""What a correct pipeline must do with a generated dataset, computed from the generator's own truth.

Per indicator Id (its newest row): ignored (the collector's query filters it out), reject (the collector
refuses it), expire (inactive upstream), or the scorer's publish / drop. And what ThreatStream must hold
at the end, among the objects tibridge wrote (foreign entries are judged apart: unchanged):

* `active` — the canonical values tibridge must hold active exactly once, each under its expected itype
  (`itypes`; hashes also with their `subtypes`);
* `not_active` — values tibridge must not hold active; it may hold them inactive only if it had published
  them first (whether it did depends on how the collector's windows split an indicator's copies);
* `rejected` — values the pipeline publishes that ThreatStream refuses (the organisation's whitelist): they
  end dead-lettered with ThreatStream's reason, never in ThreatStream.

The expected itype follows ThreatStream's vocabulary (external-apis.md §3): a malicious reputation, or none
(types forwarded unscored), is the kind's `mal_` itype; any other published classification is the kind's
`suspicious_` itype where the vocabulary has one, else `mal_` (IPv6 and hashes have no `suspicious_` form).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from tibridge.common.contracts import (
    SCORABLE_TYPES,
    Classification,
    DropReason,
    InactiveReason,
    ObservableType,
    RejectionReason,
)
from tibridge.sandbox.dataset import (
    MDTI_SOURCE_SYSTEMS,
    Dataset,
    IndicatorRow,
    ObservableTruth,
    is_supported_key,
)
from tibridge.sandbox.intel import StoreRules
from tibridge.sandbox.reputation import HostReputation, has_reputation
from tibridge.sandbox.seeding import INTEL_KINDS
from tibridge.sandbox.vocabulary import HASH_SUBTYPE_BY_LENGTH, ITYPE_SUFFIXES, ITYPES


class Outcome(StrEnum):
    PUBLISH = "publish"
    DROP = "drop"
    EXPIRE = "expire"
    REJECT = "reject"
    IGNORED = "ignored"


class IgnoredReason(StrEnum):
    SOURCE_NOT_MDTI = "source_not_mdti"
    OBSERVABLE_KEY_NOT_SUPPORTED = "observable_key_not_supported"


class PublishReason(StrEnum):
    SCORE_AT_OR_ABOVE_THRESHOLD = "score_at_or_above_threshold"
    UNSCORABLE_FORWARDED = "unscorable_forwarded"


@dataclass(frozen=True, slots=True)
class IndicatorExpectation:
    indicator_id: str
    outcome: Outcome
    reason: str
    observable_type: ObservableType | None
    canonical_value: str | None
    # The algorithm's name as the message contracts spell it (md5, sha1, sha256, sha512), compared with theirs.
    hash_algorithm: str | None = None
    itype: str | None = None  # the ThreatStream itype of a publish outcome


@dataclass(frozen=True)
class ExpectedOutcome:
    indicators: Mapping[str, IndicatorExpectation]
    active: frozenset[str]
    not_active: frozenset[str]
    itypes: Mapping[str, str] = field(default_factory=dict)
    subtypes: Mapping[str, str] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> Counter[Outcome]:
        return Counter(expectation.outcome for expectation in self.indicators.values())

    @property
    def reasons(self) -> dict[Outcome, Counter[str]]:
        reasons: dict[Outcome, Counter[str]] = {outcome: Counter() for outcome in Outcome}
        for expectation in self.indicators.values():
            reasons[expectation.outcome][expectation.reason] += 1
        return reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(outcome): self.counts[outcome] for outcome in Outcome},
            "reasons": {str(outcome): dict(sorted(counter.items())) for outcome, counter in self.reasons.items()},
            "threatstream": {
                "active": sorted(self.active),
                "not_active": sorted(self.not_active),
                "itypes": dict(sorted(self.itypes.items())),
                "subtypes": dict(sorted(self.subtypes.items())),
                "rejected": dict(sorted(self.rejected.items())),
            },
            "indicators": {
                indicator_id: {
                    "outcome": str(expectation.outcome),
                    "reason": expectation.reason,
                    "observable_type": expectation.observable_type and str(expectation.observable_type),
                    "hash_algorithm": expectation.hash_algorithm,
                    "value": expectation.canonical_value,
                    "itype": expectation.itype,
                }
                for indicator_id, expectation in sorted(self.indicators.items())
            },
        }


class ExpectedOutcomeUnavailable(ValueError):
    pass


def expected_outcome(
    dataset: Dataset,
    reputations: Callable[[str], HostReputation | None],
    threshold: int = 75,
    forward_unscorable: bool = False,
    allowed_classifications: Collection[Classification] | None = None,
    drop_non_global: bool = True,
    threatstream: StoreRules | None = None,
) -> ExpectedOutcome:
    """`reputations(value)` is the MDTI answer for a canonical value (None = never seen); `threatstream` the
    rules of the sandbox's ThreatStream (default: the real vocabulary, no whitelist)."""
    if dataset.truths is None:
        raise ExpectedOutcomeUnavailable(
            "the expected outcome is only known for generated datasets, not for rows given with --rows"
        )
    rules = threatstream or StoreRules(itypes=ITYPES)
    policy = _Policy(reputations, threshold, forward_unscorable, allowed_classifications, drop_non_global)
    indicators: dict[str, IndicatorExpectation] = {}
    for indicator_id, row in dataset.newest.items():
        expectation = policy.judge(row, dataset.truths[indicator_id], dataset)
        if expectation.outcome is Outcome.PUBLISH:
            expectation = replace(expectation, itype=_itype(expectation, reputations, rules))
        indicators[indicator_id] = expectation
    published = {str(e.canonical_value): e for e in indicators.values() if e.outcome is Outcome.PUBLISH}
    rejected = {value: "whitelisted" for value in published if value in rules.whitelist}
    active = {value: e for value, e in published.items() if value not in rejected}
    not_active = {
        expectation.canonical_value
        for expectation in indicators.values()
        if expectation.outcome in (Outcome.DROP, Outcome.EXPIRE, Outcome.REJECT) and expectation.canonical_value
    }
    return ExpectedOutcome(
        indicators=indicators,
        active=frozenset(active),
        not_active=frozenset(not_active - set(published)),
        itypes={value: str(e.itype) for value, e in active.items()},
        subtypes={
            value: str(HASH_SUBTYPE_BY_LENGTH[len(value)])
            for value, e in active.items()
            if e.observable_type is ObservableType.FILE_HASH
        },
        rejected=rejected,
    )


def _itype(
    expectation: IndicatorExpectation, reputations: Callable[[str], HostReputation | None], rules: StoreRules
) -> str:
    assert expectation.observable_type is not None  # a publish outcome always has a canonical value
    kind = INTEL_KINDS[expectation.observable_type]
    suffix = ITYPE_SUFFIXES[kind]
    scorable = expectation.observable_type in SCORABLE_TYPES
    reputation = reputations(str(expectation.canonical_value)) if scorable else None
    graded_down = reputation is not None and reputation.classification != Classification.MALICIOUS
    if graded_down and rules.itypes.get("suspicious" + suffix) is kind:
        return "suspicious" + suffix
    return "mal" + suffix


@dataclass(frozen=True)
class _Policy:
    reputations: Callable[[str], HostReputation | None]
    threshold: int
    forward_unscorable: bool
    allowed_classifications: Collection[Classification] | None
    drop_non_global: bool

    def judge(self, row: IndicatorRow, truth: ObservableTruth, dataset: Dataset) -> IndicatorExpectation:
        def expect(outcome: Outcome, reason: str) -> IndicatorExpectation:
            return IndicatorExpectation(
                row.id,
                outcome,
                reason,
                truth.observable_type,
                truth.canonical_value,
                str(truth.hash_algorithm) if truth.hash_algorithm else None,
            )

        if row.source_system not in MDTI_SOURCE_SYSTEMS:
            return expect(Outcome.IGNORED, IgnoredReason.SOURCE_NOT_MDTI)
        if row.observable_key and not is_supported_key(row.observable_key):
            return expect(Outcome.IGNORED, IgnoredReason.OBSERVABLE_KEY_NOT_SUPPORTED)
        rejection = truth.rejection
        if rejection is RejectionReason.NON_GLOBAL_IP and not self.drop_non_global:
            rejection = None
        if rejection is not None:
            return expect(Outcome.REJECT, rejection)
        inactive = _inactive_reason(row, dataset)
        if inactive is not None:
            return expect(Outcome.EXPIRE, inactive)
        if truth.observable_type not in SCORABLE_TYPES:
            if self.forward_unscorable:
                return expect(Outcome.PUBLISH, PublishReason.UNSCORABLE_FORWARDED)
            return expect(Outcome.DROP, DropReason.UNSCORABLE_TYPE)
        reputation = self.reputations(str(truth.canonical_value))
        if reputation is None or not has_reputation(reputation):
            return expect(Outcome.DROP, DropReason.NO_REPUTATION)
        if reputation.score < self.threshold:
            return expect(Outcome.DROP, DropReason.BELOW_THRESHOLD)
        if self.allowed_classifications is not None and reputation.classification not in self.allowed_classifications:
            return expect(Outcome.DROP, DropReason.CLASSIFICATION_NOT_ALLOWED)
        return expect(Outcome.PUBLISH, PublishReason.SCORE_AT_OR_ABOVE_THRESHOLD)


def _inactive_reason(row: IndicatorRow, dataset: Dataset) -> InactiveReason | None:
    if row.revoked:
        return InactiveReason.REVOKED
    if row.is_deleted:
        return InactiveReason.DELETED
    if not row.is_active:
        return InactiveReason.INACTIVE
    if row.valid_until is not None and row.valid_until < dataset.anchor:
        return InactiveReason.EXPIRED
    return None
