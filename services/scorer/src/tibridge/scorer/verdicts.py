"""The verdict policy: what reaches ThreatStream. Pure functions over an indicator and its MDTI reputation."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from tibridge.common.contracts import (
    Classification,
    DropReason,
    IndicatorCollected,
    IndicatorScored,
    Reputation,
    Verdict,
)

# MDTI's own malicious band starts here.
DEFAULT_THRESHOLD = 75

SCORE_AT_OR_ABOVE_THRESHOLD = "score_at_or_above_threshold"
UNSCORABLE_FORWARDED = "unscorable_forwarded"


class UnscorablePolicy(StrEnum):
    """URLs, file hashes and emails have no MDTI reputation: drop them, or forward them unscored."""

    DROP = "drop"
    FORWARD = "forward"


@dataclass(frozen=True)
class Policy:
    threshold: int = DEFAULT_THRESHOLD
    # Empty: any classification may be published.
    allowed_classifications: Collection[Classification] = frozenset()
    unscorable: UnscorablePolicy = UnscorablePolicy.DROP
    unscorable_confidence: int = 100

    def needs_lookup(self, indicator: IndicatorCollected) -> bool:
        """Only active IPs and domains are worth an MDTI lookup."""
        return indicator.active and indicator.observable.scorable

    def decide(self, indicator: IndicatorCollected, reputation: Reputation | None) -> IndicatorScored:
        """The verdict; `reputation` is None when MDTI has none (or none was looked up)."""
        if indicator.inactive_reason is not None:
            return IndicatorScored(
                indicator=indicator, reputation=None, verdict=Verdict.EXPIRE, reason=str(indicator.inactive_reason)
            )
        if not indicator.observable.scorable:
            return self._unscorable(indicator)
        if reputation is None:
            return _drop(indicator, None, DropReason.NO_REPUTATION)
        if reputation.score < self.threshold:
            return _drop(indicator, reputation, DropReason.BELOW_THRESHOLD)
        if self.allowed_classifications and reputation.classification not in self.allowed_classifications:
            return _drop(indicator, reputation, DropReason.CLASSIFICATION_NOT_ALLOWED)
        return IndicatorScored(
            indicator=indicator, reputation=reputation, verdict=Verdict.PUBLISH, reason=SCORE_AT_OR_ABOVE_THRESHOLD
        )

    def _unscorable(self, indicator: IndicatorCollected) -> IndicatorScored:
        if self.unscorable is UnscorablePolicy.DROP:
            return _drop(indicator, None, DropReason.UNSCORABLE_TYPE)
        # The fixed confidence travels as the indicator's own: it is what the publisher sends on.
        forwarded = indicator.model_copy(update={"confidence": self.unscorable_confidence})
        return IndicatorScored(
            indicator=forwarded, reputation=None, verdict=Verdict.PUBLISH, reason=UNSCORABLE_FORWARDED
        )


def _drop(indicator: IndicatorCollected, reputation: Reputation | None, reason: DropReason) -> IndicatorScored:
    return IndicatorScored(indicator=indicator, reputation=reputation, verdict=Verdict.DROP, reason=str(reason))
