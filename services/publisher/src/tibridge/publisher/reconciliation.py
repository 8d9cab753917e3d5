"""Desired against actual state, for `tibridge reconcile`: pure functions over scored indicators and the objects
tibridge owns in ThreatStream (as `ownership` recognises them).

* **desired** — per observable value, the newest indicator Sentinel holds for it (by indicator time, as the
  publisher's batches coalesce), scored by the scorer's verdict rules: `publish` wants an active object of ours,
  `expire` wants none active, `drop` wants none published by us.
* **actual** — the newest state of each object of ours (active or marked false positive by an analyst).

Differences: **missing** (publish wanted, nothing of ours active, no analyst's false positive), **stale-active**
(upstream revoked, deleted or let it expire, ours is still active) and **unexpected** (ours is active for a value
no indicator wants published: not in Sentinel's span, or dropped under the current rules). Values with an object
ThreatStream changed within the settle time are counted as settling and not judged.

A repair is the message the normal pipeline would have carried: the scored indicator itself for missing and
stale values, and an `expire` for unexpected ones, published on the `scored` topic so the publisher applies it
with its usual idempotency, ownership rules and dead-lettering. Each repair message has an id of its own (its
upstream version carries the reconciliation's time), so duplicate detection does not drop it as the message
that was lost; its indicator time is the original's, so the publisher's revision order is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from tibridge.common.contracts import (
    HashAlgorithm,
    InactiveReason,
    IndicatorCollected,
    IndicatorScored,
    Observable,
    ObservableType,
    Verdict,
)
from tibridge.publisher.mapping import INTEL_KINDS
from tibridge.publisher.ownership import ACTIVE, FALSE_POSITIVE, OwnedObject

RECONCILE_SOURCE = "tibridge reconcile"
NOT_IN_SENTINEL = "no active indicator in Sentinel's span wants it published"
_HASH_ALGORITHMS = {algorithm.hex_length: algorithm for algorithm in HashAlgorithm}


@dataclass(frozen=True)
class Stale:
    scored: IndicatorScored  # the expire verdict
    active: tuple[OwnedObject, ...]


@dataclass(frozen=True)
class Unexpected:
    obj: OwnedObject
    why: str
    scored: IndicatorScored | None = None  # the drop verdict, when Sentinel has the value


@dataclass(frozen=True)
class Drift:
    missing: tuple[IndicatorScored, ...]
    stale: tuple[Stale, ...]
    unexpected: tuple[Unexpected, ...]
    in_sync: int
    false_positive: int  # publish wanted, an analyst marked ours false positive: their decision stands
    settling: int
    whitelisted: int = 0  # publish wanted, but on the organisation's whitelist: ThreatStream refuses it

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.stale) + len(self.unexpected)


def desired_state(scored: Iterable[IndicatorScored]) -> dict[str, IndicatorScored]:
    """The newest scored indicator per observable value (by indicator time; a later one wins a tie)."""
    newest: dict[str, IndicatorScored] = {}
    for item in scored:
        value = item.observable.value
        held = newest.get(value)
        if held is None or item.indicator.time_generated >= held.indicator.time_generated:
            newest[value] = item
    return newest


def actual_state(pages: Iterable[Iterable[OwnedObject]]) -> list[OwnedObject]:
    """The newest state of each object from pages read in update-id order (an object changed while the pages were
    read shows up again later, with a higher update id)."""
    by_id: dict[int, OwnedObject] = {}
    for page in pages:
        for obj in page:
            held = by_id.get(obj.id)
            if held is None or obj.update_id >= held.update_id:
                by_id[obj.id] = obj
    return list(by_id.values())


def diff(
    desired: Mapping[str, IndicatorScored],
    owned: Iterable[OwnedObject],
    *,
    settled_before: datetime,
    whitelist: frozenset[str] = frozenset(),
) -> Drift:
    """The differences (see the module's doc); a value on the organisation's `whitelist` is never missing:
    ThreatStream refuses it, and the publisher dead-letters it with that reason."""
    by_value: dict[str, list[OwnedObject]] = {}
    for obj in owned:
        by_value.setdefault(obj.value, []).append(obj)
    settling = {
        value
        for value, objects in by_value.items()
        if any(obj.modified is not None and obj.modified > settled_before for obj in objects)
    }
    missing: list[IndicatorScored] = []
    stale: list[Stale] = []
    unexpected: list[Unexpected] = []
    in_sync = false_positive = whitelisted = 0
    for value in sorted(set(desired) | set(by_value)):
        if value in settling:
            continue
        objects = by_value.get(value, [])
        active = tuple(sorted((obj for obj in objects if obj.status == ACTIVE), key=lambda obj: obj.id))
        scored = desired.get(value)
        if scored is None or scored.verdict is Verdict.DROP:
            why = NOT_IN_SENTINEL if scored is None else f"the verdict is drop ({scored.reason})"
            unexpected += [Unexpected(obj, why, scored) for obj in active]
            in_sync += not active
        elif scored.verdict is Verdict.EXPIRE:
            if active:
                stale.append(Stale(scored, active))
            else:
                in_sync += 1
        elif active:
            in_sync += 1
        elif any(obj.status == FALSE_POSITIVE for obj in objects):
            false_positive += 1
        elif value in whitelist:
            whitelisted += 1
        else:
            missing.append(scored)
    return Drift(tuple(missing), tuple(stale), tuple(unexpected), in_sync, false_positive, len(settling), whitelisted)


def repairs(drift: Drift, now: datetime) -> list[IndicatorScored]:
    """The messages that bring ThreatStream to the desired state through the publisher (see the module's doc)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    messages = [_restamped(scored, stamp) for scored in drift.missing]
    messages += [_restamped(item.scored, stamp) for item in drift.stale]
    expired: set[str] = set()
    for item in drift.unexpected:
        if item.obj.value not in expired:
            expired.add(item.obj.value)
            messages.append(_expire_unexpected(item, now, stamp))
    return messages


def _restamped(scored: IndicatorScored, stamp: str) -> IndicatorScored:
    indicator = scored.indicator
    version = f"{indicator.upstream_version}~reconcile@{stamp}"
    return scored.model_copy(update={"indicator": indicator.model_copy(update={"upstream_version": version})})


def _expire_unexpected(item: Unexpected, now: datetime, stamp: str) -> IndicatorScored:
    observable = item.scored.observable if item.scored is not None else observable_of(item.obj)
    indicator = IndicatorCollected(
        observable=observable,
        indicator_id=f"{RECONCILE_SOURCE}:{observable.key}",
        upstream_version=f"reconcile@{stamp}",
        source_system=RECONCILE_SOURCE,
        time_generated=now,
        active=False,
        inactive_reason=InactiveReason.INACTIVE,
    )
    return IndicatorScored(indicator=indicator, verdict=Verdict.EXPIRE, reason=f"reconcile: {item.why}")


def observable_of(obj: OwnedObject) -> Observable:
    """The observable an object of ours stands for, from its itype's kind (hashes: the algorithm by length)."""
    kinds: Sequence[ObservableType] = [
        kind for kind, intel in INTEL_KINDS.items() if obj.itype.endswith(intel.itype_suffix)
    ]
    if not kinds:
        raise ValueError(f"itype {obj.itype!r} is not one tibridge publishes")
    kind = kinds[0]
    algorithm = _HASH_ALGORITHMS.get(len(obj.value)) if kind is ObservableType.FILE_HASH else None
    return Observable(type=kind, value=obj.value, hash_algorithm=algorithm)
