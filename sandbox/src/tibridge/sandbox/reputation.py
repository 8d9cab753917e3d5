"""The deterministic MDTI host reputation model, and pinned overrides.

Every host gets a stable score, classification and rules derived from sha256(seed, host): roughly 60 %
unknown (a third of those never seen at all), 20 % neutral, 10 % suspicious and 10 % malicious, with the
classification always inside MDTI's own score bands.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tibridge.common.contracts import Classification, Reputation, ReputationRule, RuleSeverity

# (name, description, severity, relatedDetailsUrl) per classification.
_RULES: Mapping[Classification, tuple[tuple[str, str, RuleSeverity, str | None], ...]] = {
    Classification.MALICIOUS: (
        (
            "Known C2 infrastructure",
            "Host was observed as command-and-control.",
            RuleSeverity.HIGH,
            "https://ti.defender.microsoft.com/intel-profiles/c2",
        ),
        (
            "Malware distribution",
            "Host served malicious payloads.",
            RuleSeverity.HIGH,
            "https://ti.defender.microsoft.com/articles/malware",
        ),
        ("Phishing kit host", "Host serves credential-phishing pages.", RuleSeverity.HIGH, None),
        (
            "MDTI malicious indicator",
            "Listed in an MDTI intel article as malicious.",
            RuleSeverity.MEDIUM,
            "https://ti.defender.microsoft.com/articles/ioc",
        ),
    ),
    Classification.SUSPICIOUS: (
        ("Recently registered", "Domain registered within the last 30 days.", RuleSeverity.MEDIUM, None),
        ("Open proxy", "Host was seen acting as an open proxy.", RuleSeverity.MEDIUM, None),
        (
            "Tor exit node",
            "Host is a Tor exit node.",
            RuleSeverity.LOW,
            "https://ti.defender.microsoft.com/intel-profiles/tor",
        ),
        ("Parked domain", "Domain is parked and serves ads.", RuleSeverity.LOW, None),
    ),
    Classification.NEUTRAL: (
        ("Shared hosting", "Host is shared by many unrelated sites.", RuleSeverity.LOW, None),
        ("Cloud provider range", "Address belongs to a large cloud provider.", RuleSeverity.LOW, None),
    ),
    Classification.UNKNOWN: (
        ("No recent observations", "MDTI has little data on this host.", RuleSeverity.UNKNOWN, None),
    ),
}
_RULE_COUNTS: Mapping[Classification, tuple[int, int]] = {
    Classification.MALICIOUS: (1, 3),
    Classification.SUSPICIOUS: (1, 2),
    Classification.NEUTRAL: (0, 1),
    Classification.UNKNOWN: (0, 1),
}
# Cumulative shares: never seen, unknown, neutral, suspicious, malicious.
_NEVER_SEEN_BELOW = 0.25
_UNKNOWN_BELOW = 0.60
_NEUTRAL_BELOW = 0.80
_SUSPICIOUS_BELOW = 0.90


def _band(classification: Classification) -> tuple[int, int]:
    return {
        Classification.UNKNOWN: (0, 24),
        Classification.NEUTRAL: (25, 49),
        Classification.SUSPICIOUS: (50, 74),
        Classification.MALICIOUS: (75, 100),
    }[classification]


def reputation_for(value: str, seed: int) -> Reputation | None:
    """The seeded reputation of a host; None when MDTI never saw it."""
    digest = hashlib.sha256(f"{seed}\x1f{value.lower()}".encode()).digest()
    draw = int.from_bytes(digest[:4], "big") / 2**32
    if draw < _NEVER_SEEN_BELOW:
        return None
    if draw < _UNKNOWN_BELOW:
        classification = Classification.UNKNOWN
    elif draw < _NEUTRAL_BELOW:
        classification = Classification.NEUTRAL
    elif draw < _SUSPICIOUS_BELOW:
        classification = Classification.SUSPICIOUS
    else:
        classification = Classification.MALICIOUS
    low, high = _band(classification)
    score = low + digest[4] % (high - low + 1)
    if classification is Classification.UNKNOWN and digest[5] < 96:
        score = 0  # MDTI's "known but nothing to say": score 0, no rules
    fewest, most = _RULE_COUNTS[classification]
    count = 0 if score == 0 else fewest + digest[6] % (most - fewest + 1)
    catalogue = _RULES[classification]
    first = digest[7] % len(catalogue)
    rules = tuple(
        ReputationRule(name=name, description=description, severity=severity, related_details_url=url)
        for name, description, severity, url in (catalogue[(first + i) % len(catalogue)] for i in range(count))
    )
    return Reputation(score=score, classification=classification, rules=rules)


def has_reputation(reputation: Reputation | None) -> bool:
    """Both ways MDTI says "never seen" (404, or 200 unknown/score 0/no rules) mean no reputation."""
    if reputation is None:
        return False
    return not (reputation.classification is Classification.UNKNOWN and reputation.score == 0 and not reputation.rules)


class ReputationModel:
    """The seeded model with pinned values on top (a pinned None means "never seen")."""

    def __init__(self, seed: int, pinned: Mapping[str, Reputation | None] | None = None) -> None:
        self.seed = seed
        self._pinned = {host.lower(): reputation for host, reputation in (pinned or {}).items()}

    def lookup(self, host: str) -> Reputation | None:
        key = host.lower()
        if key in self._pinned:
            return self._pinned[key]
        return reputation_for(key, self.seed)

    __call__ = lookup


def graph_body(host: str, reputation: Reputation) -> dict[str, Any]:
    """The Graph `hostReputation` resource."""
    return {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/threatIntelligence/hosts('"
        + host.replace("'", "''")
        + "')/reputation/$entity",
        "@odata.type": "#microsoft.graph.security.hostReputation",
        "id": hashlib.sha256(host.lower().encode()).hexdigest()[:32],
        "classification": str(reputation.classification),
        "score": reputation.score,
        "rules": [
            {
                "name": rule.name,
                "description": rule.description,
                "severity": str(rule.severity),
                "relatedDetailsUrl": rule.related_details_url,
            }
            for rule in reputation.rules
        ],
    }


class PinnedReputationsError(ValueError):
    pass


def parse_pinned(raw: Any) -> dict[str, Reputation | None]:
    """`{"host": {"score": .., "classification": .., "rules": [{name, description, severity,
    relatedDetailsUrl}]}}`; `null` pins a host as never seen."""
    if not isinstance(raw, dict):
        raise PinnedReputationsError("pinned reputations must be a JSON object of host → reputation")
    pinned: dict[str, Reputation | None] = {}
    for host, entry in raw.items():
        if entry is None:
            pinned[host] = None
            continue
        try:
            rules = [
                {
                    "name": rule.get("name", ""),
                    "description": rule.get("description", ""),
                    "severity": rule.get("severity", "unknown"),
                    "related_details_url": rule.get("relatedDetailsUrl", rule.get("related_details_url")),
                }
                for rule in entry.get("rules", [])
            ]
            pinned[host] = Reputation.model_validate({**entry, "rules": rules})
        except (AttributeError, ValidationError) as error:
            raise PinnedReputationsError(
                f"pinned reputation for {host!r} is invalid; give score 0-100, classification and rules: {error}"
            ) from None
    return pinned


def load_pinned(path: Path) -> dict[str, Reputation | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PinnedReputationsError(f"cannot read reputations file {path}: {error}") from None
    return parse_pinned(raw)
