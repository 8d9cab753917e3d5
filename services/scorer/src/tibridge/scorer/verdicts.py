"""The verdict rules: what reaches ThreatStream. Pure functions over an indicator, its MDTI reputation and the
TIBRIDGE_SCORER_* settings."""

from __future__ import annotations

from tibridge.common.contracts import DropReason, IndicatorCollected, IndicatorScored, Reputation, Verdict
from tibridge.scorer.settings import ScoringSettings, UnscorableHandling

SCORE_AT_OR_ABOVE_THRESHOLD = "score_at_or_above_threshold"
UNSCORABLE_FORWARDED = "unscorable_forwarded"


def needs_lookup(indicator: IndicatorCollected) -> bool:
    """Only active IPs and domains are worth an MDTI lookup."""
    return indicator.active and indicator.observable.scorable


def decide(indicator: IndicatorCollected, reputation: Reputation | None, rules: ScoringSettings) -> IndicatorScored:
    """The verdict; `reputation` is None when MDTI has none (or none was looked up)."""
    if indicator.inactive_reason is not None:
        return IndicatorScored(
            indicator=indicator, reputation=None, verdict=Verdict.EXPIRE, reason=str(indicator.inactive_reason)
        )
    if not indicator.observable.scorable:
        return _unscorable(indicator, rules)
    if reputation is None:
        return _drop(indicator, None, DropReason.NO_REPUTATION)
    if reputation.score < rules.threshold:
        return _drop(indicator, reputation, DropReason.BELOW_THRESHOLD)
    if rules.allowed_classifications and reputation.classification not in rules.allowed_classifications:
        return _drop(indicator, reputation, DropReason.CLASSIFICATION_NOT_ALLOWED)
    return IndicatorScored(
        indicator=indicator, reputation=reputation, verdict=Verdict.PUBLISH, reason=SCORE_AT_OR_ABOVE_THRESHOLD
    )


def _unscorable(indicator: IndicatorCollected, rules: ScoringSettings) -> IndicatorScored:
    if rules.unscorable is UnscorableHandling.DROP:
        return _drop(indicator, None, DropReason.UNSCORABLE_TYPE)
    # The fixed confidence travels as the indicator's own: it is what the publisher sends on.
    forwarded = indicator.model_copy(update={"confidence": rules.unscorable_confidence})
    return IndicatorScored(indicator=forwarded, reputation=None, verdict=Verdict.PUBLISH, reason=UNSCORABLE_FORWARDED)


def _drop(indicator: IndicatorCollected, reputation: Reputation | None, reason: DropReason) -> IndicatorScored:
    return IndicatorScored(indicator=indicator, reputation=reputation, verdict=Verdict.DROP, reason=str(reason))
