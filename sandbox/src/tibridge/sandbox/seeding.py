"""What the sandbox's ThreatStream holds before tibridge runs: foreign entries and the organisation's whitelist.

Both are drawn per value from sha256(seed, value), so they do not depend on the order values are met in and
stay the same for a seed. Foreign entries are of three shapes, one to three per chosen value:

* `other_source` — our organisation's, private, from another source, with an itype tibridge never uses;
* `other_org`    — another organisation's public entry, often the very itype (and tags: `mdti`, even
  `tibridge`) tibridge would use; not editable by us;
* `retired`      — our organisation's, from another source, already inactive or marked a false positive.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from tibridge.common.contracts import ObservableType
from tibridge.sandbox.dataset import Dataset
from tibridge.sandbox.intel import Attributes, IntelObject, StoreRules
from tibridge.sandbox.vocabulary import HASH_SUBTYPE_BY_LENGTH, ITYPE_SUFFIXES, IntelKind

INTEL_KINDS: Mapping[ObservableType, IntelKind] = {
    ObservableType.IPV4: IntelKind.IP,
    ObservableType.IPV6: IntelKind.IPV6,
    ObservableType.DOMAIN: IntelKind.DOMAIN,
    ObservableType.URL: IntelKind.URL,
    ObservableType.FILE_HASH: IntelKind.HASH,
    ObservableType.EMAIL: IntelKind.EMAIL,
}
OTHER_SOURCES = ("Internal SOC", "Recorded Future", "abuse.ch ThreatFox", "Analyst")
OTHER_ORGS = (("Anomali Community", 1001), ("OSINT Sharing Circle", 1002), ("Partner CERT", 1003))
SHAPES = ("other_source", "other_org", "retired")
# Itypes tibridge may publish under; foreign entries of our own organisation avoid them, so that no correct
# client could update a foreign entry by re-publishing (identity is (value, itype) in the organisation).
PUBLISHED_PREFIXES = ("mal_", "suspicious_")


def _draw(seed: int, purpose: str, value: str) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dataset_values(dataset: Dataset) -> list[tuple[str, IntelKind]]:
    """Every valid canonical value the generator made, once, in the order first made."""
    if dataset.truths is None:
        return []
    found: dict[str, IntelKind] = {}
    for truth in dataset.truths.values():
        if truth.rejection is None and truth.canonical_value and truth.observable_type is not None:
            found.setdefault(truth.canonical_value, INTEL_KINDS[truth.observable_type])
    return list(found.items())


def whitelist(values: Iterable[tuple[str, IntelKind]], seed: int, share: float, extra: Iterable[str]) -> frozenset[str]:
    """The organisation's whitelist: imports reject these values and upserts leave them out."""
    return frozenset(value for value, _ in values if _draw(seed, "whitelist", value) < share) | frozenset(extra)


def foreign_entries(
    values: Sequence[tuple[str, IntelKind]],
    seed: int,
    share: float,
    rules: StoreRules,
    now: datetime,
    max_values: int | None = None,
) -> Iterator[IntelObject]:
    """Foreign entries for `share` of `values`, for the first `max_values` chosen at most (so a big dataset
    does not make a big ThreatStream: a few thousand values prove ownership as well as a million)."""
    other_itypes = {
        kind: sorted(name for name, k in rules.itypes.items() if k is kind and not name.startswith(PUBLISHED_PREFIXES))
        for kind in IntelKind
    }
    next_id, chosen = 1, 0
    for value, kind in values:
        if (max_values is not None and chosen >= max_values) or _draw(seed, "foreign", value) >= share:
            continue
        chosen += 1
        rng = random.Random(f"{seed}:foreign:{value}")
        for shape in rng.sample(SHAPES, rng.randint(1, len(SHAPES))):
            yield _entry(next_id, value, kind, shape, rng, rules, now, other_itypes[kind])
            next_id += 1


def _entry(
    object_id: int,
    value: str,
    kind: IntelKind,
    shape: str,
    rng: random.Random,
    rules: StoreRules,
    now: datetime,
    other_itypes: Sequence[str],
) -> IntelObject:
    ours = shape != "other_org"
    if ours:
        itype = rng.choice(other_itypes)
        source, organization = rng.choice(OTHER_SOURCES), rules.organization_id
        tags = [{"name": rng.choice(("soc-triage", "blocklist", "watch")), "tlp": "amber"}]
    else:
        itype = "mal" + ITYPE_SUFFIXES[kind]
        source, organization = rng.choice(OTHER_ORGS)
        draw = rng.random()
        tags = [{"name": "mdti"}, {"name": "Microsoft Defender Threat Intelligence"}] if draw < 0.5 else []
        if draw < 0.2:
            # Another organisation's tibridge, publishing public: the owner tag alone makes nothing ours.
            tags.append({"name": "tibridge"})
    retired = shape == "retired"
    created = now - timedelta(days=rng.randint(30, 700))
    # Far from the run either way, so nothing the sandbox does by itself changes a foreign entry.
    expiration = now - timedelta(days=rng.randint(1, 30)) if retired else now + timedelta(days=rng.randint(400, 900))
    return IntelObject(
        id=object_id,
        value=value,
        kind=kind,
        subtype=HASH_SUBTYPE_BY_LENGTH.get(len(value)) if kind is IntelKind.HASH else None,
        itype=itype,
        status=rng.choice(("inactive", "falsepos")) if retired else "active",
        attributes=Attributes(
            confidence=rng.randint(20, 100),
            severity=rng.choice(("low", "medium", "high", "very-high")),
            is_public=not ours,
            threat_type=rng.choice(("malware", "c2", "scan", "phish", "suspicious")),
            tags=tags,
            tlp=None if not ours else "amber",
            expiration_ts=expiration,
        ),
        source=source,
        owner_organization_id=organization,
        created_ts=created,
        modified_ts=created + timedelta(days=rng.randint(0, 29)),
        update_id=object_id,
        foreign=True,
        editable=ours,
        was_active=not retired,
    )
