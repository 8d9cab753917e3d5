"""From a scored indicator to the ThreatStream object it should be. Pure functions, table-tested.

ThreatStream's wire facts (external-apis.md §3):
* value keys: IPv4 `srcip`, IPv6 `ipv6` (with an `_ipv6` itype), `domain`, `url`, `email`, and every hash kind
  under `md5` with `subtype` MD5|SHA1|SHA256|SHA512. An import states one itype per kind in `ip_mapping`,
  `domain_mapping`, `url_mapping`, `email_mapping`, `md5_mapping`; `ip_mapping` also gives IPv6 its `_ipv6`
  form (there is no `ipv6_mapping`), so an IPv6 observable needs `ip_mapping=mal_ip` to become `mal_ipv6`.
* itype = kind and MDTI classification: `malicious` → the `mal_` itype; any other classification that was still
  published (a threshold below MDTI's malicious band, or a classification newer than this reader) → the
  `suspicious_` itype where ThreatStream has one (IPv4, domains, URLs, emails); IPv6 (`suspicious_ipv6` is
  unconfirmed) and hashes (no `suspicious_md5`) always take `mal_`. No reputation (forwarded unscored) → `mal_`.
* confidence = the MDTI score, or the indicator's own confidence when it has no reputation; severity = the
  higher of the score band (≥90 very-high, ≥75 high, ≥50 medium, else low) and the rules' highest severity.
* tags (what an analyst filters by): the owner tag (what tibridge recognises as its own), `mdti`, the source
  name and the upstream source system, then the indicator's types, labels and tags and the reputation's rules,
  de-duplicated, shortened and capped, each carrying the indicator's TLP.
* expiry = ValidUntil, else now + the default lifetime, clamped to [now + 1 hour, now + 10 years]: an import
  refuses a past expiry, and a year-9999 ValidUntil must neither overflow date arithmetic nor look like a date.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

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
from tibridge.publisher.settings import PublishingSettings, TlpSpelling

MDTI_TAG = "mdti"
MALICIOUS_PREFIX = "mal"
SUSPICIOUS_PREFIX = "suspicious"
MAX_TAGS = 16
MAX_TAG_LENGTH = 50
# Candidate tag texts looked at per indicator: the contract bounds nothing, this bounds the work.
_MAX_TAG_CANDIDATES = 64
MIN_LIFETIME = timedelta(hours=1)
MAX_LIFETIME = timedelta(days=3650)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    VERY_HIGH = "very-high"


SEVERITY_RANK: Mapping[Severity, int] = {severity: rank for rank, severity in enumerate(Severity)}


@dataclass(frozen=True)
class IntelKind:
    """How ThreatStream names one observable kind."""

    itype_suffix: str
    value_field: str  # the upsert object's key for the value
    mapping_field: str  # the import form's itype field for the kind
    graded: bool  # whether ThreatStream has a `suspicious_` itype for the kind

    def mapping_value(self, itype: str) -> str:
        """What the import form's mapping field must say for an observable of this kind to get `itype`."""
        if self.itype_suffix == "_ipv6":
            return itype.removesuffix("_ipv6") + "_ip"
        return itype


INTEL_KINDS: Mapping[ObservableType, IntelKind] = {
    ObservableType.IPV4: IntelKind("_ip", "srcip", "ip_mapping", graded=True),
    ObservableType.IPV6: IntelKind("_ipv6", "ipv6", "ip_mapping", graded=False),
    ObservableType.DOMAIN: IntelKind("_domain", "domain", "domain_mapping", graded=True),
    ObservableType.URL: IntelKind("_url", "url", "url_mapping", graded=True),
    ObservableType.FILE_HASH: IntelKind("_md5", "md5", "md5_mapping", graded=False),
    ObservableType.EMAIL: IntelKind("_email", "email", "email_mapping", graded=True),
}
HASH_SUBTYPES: Mapping[HashAlgorithm, str] = {
    HashAlgorithm.MD5: "MD5",
    HashAlgorithm.SHA1: "SHA1",
    HashAlgorithm.SHA256: "SHA256",
    HashAlgorithm.SHA512: "SHA512",
}
# Every itype tibridge may publish: an object under another itype is never tibridge's, whatever its tags say.
OUR_ITYPES = frozenset(
    prefix + kind.itype_suffix
    for kind in INTEL_KINDS.values()
    for prefix in ((MALICIOUS_PREFIX, SUSPICIOUS_PREFIX) if kind.graded else (MALICIOUS_PREFIX,))
)
_TLP_SPELLINGS: Mapping[TlpSpelling, Mapping[Tlp, str | None]] = {
    TlpSpelling.SAFE: {
        Tlp.CLEAR: None,
        Tlp.GREEN: "green",
        Tlp.AMBER: "amber",
        Tlp.AMBER_STRICT: "red",
        Tlp.RED: "red",
    },
    TlpSpelling.TLP2: {tlp: str(tlp) for tlp in Tlp},
    TlpSpelling.TLP1: {
        Tlp.CLEAR: "white",
        Tlp.GREEN: "green",
        Tlp.AMBER: "amber",
        Tlp.AMBER_STRICT: "red",
        Tlp.RED: "red",
    },
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


def wire_tlp(tlp: Tlp | None, spelling: TlpSpelling) -> str | None:
    """The TLP as ThreatStream is sent it; None: send none."""
    return None if tlp is None else _TLP_SPELLINGS[spelling][tlp]


@dataclass(frozen=True)
class IntelObject:
    """One ThreatStream observable as tibridge wants it to be (active)."""

    observable: Observable
    itype: str
    threat_type: str
    confidence: int | None
    severity: Severity
    tags: tuple[str, ...]
    tlp: str | None  # already spelt for the wire
    expiration: datetime

    @property
    def kind(self) -> IntelKind:
        return INTEL_KINDS[self.observable.type]

    @property
    def subtype(self) -> str | None:
        algorithm = self.observable.hash_algorithm
        return None if algorithm is None else HASH_SUBTYPES[algorithm]


def itype_for(observable: Observable, reputation: Reputation | None) -> str:
    kind = INTEL_KINDS[observable.type]
    graded_down = reputation is not None and reputation.classification is not Classification.MALICIOUS
    prefix = SUSPICIOUS_PREFIX if graded_down and kind.graded else MALICIOUS_PREFIX
    return prefix + kind.itype_suffix


def threat_type_for(itype: str) -> str:
    return "malware" if itype.startswith(MALICIOUS_PREFIX + "_") else "suspicious"


def severity_for(score: int | None, rules: Iterable[ReputationRule] = ()) -> Severity:
    band = next((severity for floor, severity in _SCORE_BANDS if score is not None and score >= floor), Severity.LOW)
    ruled = [_RULE_SEVERITIES[rule.severity] for rule in rules if rule.severity in _RULE_SEVERITIES]
    return max([band, *ruled], key=SEVERITY_RANK.__getitem__)


def clamp_expiration(moment: datetime, now: datetime) -> datetime:
    """Within what ThreatStream takes from us: not in the past (an import refuses that), not beyond a decade."""
    return min(max(moment, now + MIN_LIFETIME), now + MAX_LIFETIME)


def tag_text(text: str) -> str:
    """A tag an analyst can read: printable, single-spaced, at most MAX_TAG_LENGTH characters."""
    # Control and format characters (bidi overrides, zero-width, NUL) go; every kind of space becomes one.
    kept = (" " if unicodedata.category(ch)[0] == "Z" else ch for ch in text[: MAX_TAG_LENGTH * 4])
    words = " ".join("".join(ch for ch in kept if unicodedata.category(ch)[0] != "C").split())
    return words if len(words) <= MAX_TAG_LENGTH else words[: MAX_TAG_LENGTH - 1].rstrip() + "…"


def tags_for(scored: IndicatorScored, publishing: PublishingSettings) -> tuple[str, ...]:
    indicator = scored.indicator
    rules = sorted(scored.reputation.rules if scored.reputation else (), key=_rule_rank, reverse=True)
    candidates = _bounded(
        (
            publishing.owner_tag,
            MDTI_TAG,
            publishing.source_name,
            indicator.source_system,
            *indicator.threat_types,
            *indicator.labels,
            *indicator.tags,
            *(rule.name for rule in rules),
        )
    )
    chosen: dict[str, str] = {}
    for text in map(tag_text, candidates):
        if text and text.casefold() not in chosen:
            chosen[text.casefold()] = text
        if len(chosen) == MAX_TAGS:
            break
    return tuple(chosen.values())


def _bounded(texts: Iterable[str]) -> Iterator[str]:
    for count, text in enumerate(texts):
        if count == _MAX_TAG_CANDIDATES:
            return
        yield text


def _rule_rank(rule: ReputationRule) -> int:
    return SEVERITY_RANK[_RULE_SEVERITIES.get(rule.severity, Severity.LOW)]


def intel_object(scored: IndicatorScored, publishing: PublishingSettings, now: datetime) -> IntelObject:
    """What ThreatStream should hold, active, for a `publish` verdict."""
    indicator = scored.indicator
    reputation = scored.reputation
    itype = itype_for(indicator.observable, reputation)
    confidence = reputation.score if reputation else indicator.confidence
    lifetime = timedelta(days=publishing.default_lifetime_days)
    return IntelObject(
        observable=indicator.observable,
        itype=itype,
        threat_type=threat_type_for(itype),
        confidence=confidence,
        severity=severity_for(confidence, reputation.rules if reputation else ()),
        tags=tags_for(scored, publishing),
        tlp=wire_tlp(indicator.tlp, publishing.tlp_spelling),
        expiration=clamp_expiration(indicator.valid_until or now + lifetime, now),
    )
