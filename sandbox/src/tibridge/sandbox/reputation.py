"""The deterministic MDTI host reputation model, and pinned overrides.

Every host gets a stable score, classification and rules derived from sha256(seed, host): roughly 60 %
unknown (a third of those never seen at all), 20 % neutral, 10 % suspicious and 10 % malicious, with the
classification always inside MDTI's own score bands. Graph documents `unknownFutureValue` for both the
classification and a rule's severity: about 2 % of seen hosts carry it as their classification (score
unchanged) and about 5 % of rules as their severity, so a client that cannot read an unknown enum value fails
here first. The model's own types are wire-level (plain strings) for that reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tibridge.common.contracts import Classification, Reputation, RuleSeverity

UNKNOWN_FUTURE_VALUE = "unknownFutureValue"
CLASSIFICATIONS = (*(str(c) for c in Classification if c != UNKNOWN_FUTURE_VALUE), UNKNOWN_FUTURE_VALUE)
RULE_SEVERITIES = (*(str(s) for s in RuleSeverity), UNKNOWN_FUTURE_VALUE)
_FUTURE_CLASSIFICATION_BELOW = 0.02
_FUTURE_SEVERITY_BELOW = 0.05


@dataclass(frozen=True, slots=True)
class HostRule:
    name: str
    description: str = ""
    severity: str = "unknown"
    related_details_url: str | None = None


@dataclass(frozen=True, slots=True)
class HostReputation:
    """A Graph `hostReputation` as the sandbox serves it."""

    score: int
    classification: str
    rules: tuple[HostRule, ...] = ()

    @classmethod
    def of(cls, reputation: HostReputation | Reputation) -> HostReputation:
        if isinstance(reputation, HostReputation):
            return reputation
        return cls(
            reputation.score,
            str(reputation.classification),
            tuple(
                HostRule(rule.name, rule.description, str(rule.severity), rule.related_details_url)
                for rule in reputation.rules
            ),
        )


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


def reputation_for(value: str, seed: int) -> HostReputation | None:
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
        HostRule(
            name,
            description,
            UNKNOWN_FUTURE_VALUE if digest[10 + i] / 256 < _FUTURE_SEVERITY_BELOW else str(severity),
            url,
        )
        for i, (name, description, severity, url) in enumerate(
            catalogue[(first + i) % len(catalogue)] for i in range(count)
        )
    )
    future = score > 0 and int.from_bytes(digest[8:10], "big") / 2**16 < _FUTURE_CLASSIFICATION_BELOW
    return HostReputation(score, UNKNOWN_FUTURE_VALUE if future else str(classification), rules)


def has_reputation(reputation: HostReputation | Reputation | None) -> bool:
    """Both ways MDTI says "never seen" (404, or 200 unknown/score 0/no rules) mean no reputation."""
    if reputation is None:
        return False
    reputation = HostReputation.of(reputation)
    return not (reputation.classification == "unknown" and reputation.score == 0 and not reputation.rules)


class ReputationModel:
    """The seeded model with pinned values on top (a pinned None means "never seen")."""

    def __init__(self, seed: int, pinned: Mapping[str, HostReputation | Reputation | None] | None = None) -> None:
        self.seed = seed
        self._pinned = {
            host.lower(): HostReputation.of(reputation) if reputation is not None else None
            for host, reputation in (pinned or {}).items()
        }

    def lookup(self, host: str) -> HostReputation | None:
        key = host.lower()
        if key in self._pinned:
            return self._pinned[key]
        return reputation_for(key, self.seed)

    __call__ = lookup


def graph_body(host: str, reputation: HostReputation | Reputation) -> dict[str, Any]:
    """The Graph `hostReputation` resource."""
    reputation = HostReputation.of(reputation)
    return {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/threatIntelligence/hosts('"
        + host.replace("'", "''")
        + "')/reputation/$entity",
        "@odata.type": "#microsoft.graph.security.hostReputation",
        "id": hashlib.sha256(host.lower().encode()).hexdigest()[:32],
        "classification": reputation.classification,
        "score": reputation.score,
        "rules": [
            {
                "name": rule.name,
                "description": rule.description,
                "severity": rule.severity,
                "relatedDetailsUrl": rule.related_details_url,
            }
            for rule in reputation.rules
        ],
    }


class PinnedReputationsError(ValueError):
    pass


def _pinned_one(host: str, entry: Any) -> HostReputation:
    def fail(problem: str) -> PinnedReputationsError:
        return PinnedReputationsError(
            f"pinned reputation for {host!r} is invalid ({problem}); give score 0-100, classification and rules"
        )

    if not isinstance(entry, dict):
        raise fail("not an object")
    score, classification = entry.get("score"), entry.get("classification")
    if not isinstance(score, int) or isinstance(score, bool) or not 0 <= score <= 100:
        raise fail(f"score {score!r}")
    if classification not in CLASSIFICATIONS:
        raise fail(f"classification {classification!r} is not one of {', '.join(CLASSIFICATIONS)}")
    rules = entry.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise fail("rules must be a list of objects")
    parsed = []
    for rule in rules:
        severity = rule.get("severity", "unknown")
        if severity not in RULE_SEVERITIES:
            raise fail(f"rule severity {severity!r} is not one of {', '.join(RULE_SEVERITIES)}")
        url = rule.get("relatedDetailsUrl", rule.get("related_details_url"))
        parsed.append(HostRule(str(rule.get("name", "")), str(rule.get("description", "")), severity, url))
    return HostReputation(score, classification, tuple(parsed))


def parse_pinned(raw: Any) -> dict[str, HostReputation | None]:
    """`{"host": {"score": .., "classification": .., "rules": [{name, description, severity,
    relatedDetailsUrl}]}}`; `null` pins a host as never seen. `unknownFutureValue` is accepted wherever Graph
    documents it."""
    if not isinstance(raw, dict):
        raise PinnedReputationsError("pinned reputations must be a JSON object of host → reputation")
    return {host: None if entry is None else _pinned_one(host, entry) for host, entry in raw.items()}


def load_pinned(path: Path) -> dict[str, HostReputation | None]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PinnedReputationsError(f"cannot read reputations file {path}: {error}") from None
    return parse_pinned(raw)
