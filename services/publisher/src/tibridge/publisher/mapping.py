"""From a scored indicator to the ThreatStream object it becomes. Pure functions, table-tested.

Choices (ThreatStream's vocabulary is in external-apis.md §3):
* itype = observable kind and MDTI classification: `malicious` → the `mal_` form; any other classification that
  was still published (a threshold below MDTI's malicious band) → the `suspicious_` form, which ThreatStream
  has for IPs, IPv6, domains and URLs. No reputation (types forwarded unscored) → the `mal_` form. Every file
  hash is filed under `mal_md5`, as ThreatStream files all hash kinds (it records the algorithm itself).
* confidence = the MDTI score, or the indicator's own confidence when it has no reputation.
* severity = the higher of the score band (≥90 very-high, ≥75 high, ≥50 medium, else low) and the rules'
  highest severity.
* tags = `mdti`, the source name, then the rules' names (shortened, highest severity first, a few at most),
  each carrying the indicator's TLP.
* expiry = the indicator's ValidUntil, else now + the default lifetime; an `expire` verdict expires now.
* An `expire` verdict without a reputation cannot know which itype was published, so it expires every itype
  the observable could have been published under (`mal_` and, where it exists, `suspicious_`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from tibridge.common.contracts import (
    Classification,
    IndicatorScored,
    Observable,
    ObservableType,
    Reputation,
    ReputationRule,
    RuleSeverity,
    Tlp,
    Verdict,
)

MDTI_TAG = "mdti"
MALICIOUS_PREFIX = "mal"
SUSPICIOUS_PREFIX = "suspicious"
MAX_RULE_TAGS = 8
MAX_TAG_LENGTH = 50


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    VERY_HIGH = "very-high"


class IntelStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class IntelKind:
    """How ThreatStream names one observable kind."""

    itype_suffix: str
    # The key an upsert object carries the value under, and the import form's itype field for the kind.
    value_field: str
    import_mapping_field: str
    # Whether ThreatStream has a `suspicious_` itype for the kind.
    graded: bool


INTEL_KINDS: Mapping[ObservableType, IntelKind] = {
    ObservableType.IPV4: IntelKind("_ip", "srcip", "ip_mapping", graded=True),
    ObservableType.IPV6: IntelKind("_ipv6", "srcip", "ipv6_mapping", graded=True),
    ObservableType.DOMAIN: IntelKind("_domain", "domain", "domain_mapping", graded=True),
    ObservableType.URL: IntelKind("_url", "url", "url_mapping", graded=True),
    ObservableType.FILE_HASH: IntelKind("_md5", "md5", "md5_mapping", graded=False),
    ObservableType.EMAIL: IntelKind("_email", "email", "email_mapping", graded=False),
}

_SCORE_BANDS: Sequence[tuple[int, Severity]] = (
    (90, Severity.VERY_HIGH),
    (75, Severity.HIGH),
    (50, Severity.MEDIUM),
)
_RULE_SEVERITIES: Mapping[RuleSeverity, Severity] = {
    RuleSeverity.LOW: Severity.LOW,
    RuleSeverity.MEDIUM: Severity.MEDIUM,
    RuleSeverity.HIGH: Severity.HIGH,
}
_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity)}


@dataclass(frozen=True)
class MappingPolicy:
    default_lifetime: timedelta
    source_name: str


@dataclass(frozen=True)
class Tag:
    name: str
    tlp: Tlp | None

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "tlp": str(self.tlp)} if self.tlp else {"name": self.name}


@dataclass(frozen=True)
class IntelObject:
    """One ThreatStream observable as we want it to be."""

    observable: Observable
    itype: str
    threat_type: str
    status: IntelStatus
    confidence: int | None
    severity: Severity
    tags: tuple[Tag, ...]
    tlp: Tlp | None
    expiration: datetime

    @property
    def kind(self) -> IntelKind:
        return INTEL_KINDS[self.observable.type]


def itype_for(observable: Observable, reputation: Reputation | None) -> str:
    kind = INTEL_KINDS[observable.type]
    graded_down = reputation is not None and reputation.classification is not Classification.MALICIOUS
    prefix = SUSPICIOUS_PREFIX if graded_down and kind.graded else MALICIOUS_PREFIX
    return prefix + kind.itype_suffix


def possible_itypes(observable: Observable) -> tuple[str, ...]:
    """Every itype we could have published the observable under."""
    kind = INTEL_KINDS[observable.type]
    prefixes = (MALICIOUS_PREFIX, SUSPICIOUS_PREFIX) if kind.graded else (MALICIOUS_PREFIX,)
    return tuple(prefix + kind.itype_suffix for prefix in prefixes)


def threat_type_for(itype: str) -> str:
    return "malware" if itype.startswith(MALICIOUS_PREFIX + "_") else "suspicious"


def severity_for(score: int | None, rules: Iterable[ReputationRule] = ()) -> Severity:
    band = next((severity for floor, severity in _SCORE_BANDS if score is not None and score >= floor), Severity.LOW)
    ruled = [_RULE_SEVERITIES[rule.severity] for rule in rules if rule.severity in _RULE_SEVERITIES]
    return max([band, *ruled], key=_SEVERITY_RANK.__getitem__)


def tags_for(scored: IndicatorScored, policy: MappingPolicy) -> tuple[Tag, ...]:
    rules = sorted(scored.reputation.rules if scored.reputation else (), key=_rule_rank, reverse=True)
    rule_names = dict.fromkeys(name for name in (_short(rule.name) for rule in rules) if name)
    names = dict.fromkeys([MDTI_TAG, _short(policy.source_name), *list(rule_names)[:MAX_RULE_TAGS]])
    return tuple(Tag(name, scored.indicator.tlp) for name in names)


def _rule_rank(rule: ReputationRule) -> int:
    return _SEVERITY_RANK[_RULE_SEVERITIES.get(rule.severity, Severity.LOW)]


def _short(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= MAX_TAG_LENGTH else words[: MAX_TAG_LENGTH - 1].rstrip() + "…"


def intel_objects(scored: IndicatorScored, policy: MappingPolicy, now: datetime) -> tuple[IntelObject, ...]:
    """What ThreatStream should hold for a `publish` or `expire` verdict (one object, or one per itype)."""
    indicator = scored.indicator
    reputation = scored.reputation
    confidence = reputation.score if reputation else indicator.confidence
    expiring = scored.verdict is Verdict.EXPIRE
    if expiring:
        itypes = (itype_for(indicator.observable, reputation),) if reputation else possible_itypes(indicator.observable)
        expiration = now
    else:
        itypes = (itype_for(indicator.observable, reputation),)
        expiration = indicator.valid_until or now + policy.default_lifetime
    severity = severity_for(confidence, reputation.rules if reputation else ())
    tags = tags_for(scored, policy)
    return tuple(
        IntelObject(
            observable=indicator.observable,
            itype=itype,
            threat_type=threat_type_for(itype),
            status=IntelStatus.INACTIVE if expiring else IntelStatus.ACTIVE,
            confidence=confidence,
            severity=severity,
            tags=tags,
            tlp=indicator.tlp,
            expiration=expiration,
        )
        for itype in itypes
    )
