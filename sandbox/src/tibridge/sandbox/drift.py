"""Drift between Sentinel and ThreatStream, seeded on purpose, for `tibridge reconcile` to find and repair.

After a run, three objects of our organisation are made wrong behind the API's back, as an analyst, a script or a
lost message would leave them:

* **missing** — the one active object of ours for a value the pipeline publishes is deleted;
* **stale** — an active object of ours is planted for a value whose every indicator upstream is inactive (revoked,
  deleted, deactivated or expired): it should have been deactivated;
* **unexpected** — an active object of ours is planted for a value Sentinel never had.

Planted objects carry the owner tag, the kind's `mal_` itype and our visibility, as tibridge's own do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tibridge.sandbox.expected import ExpectedOutcome, Outcome
from tibridge.sandbox.intel import Attributes, IntelStore, classify
from tibridge.sandbox.vocabulary import ITYPE_SUFFIXES

UNEXPECTED_VALUE = "tibridge-drift-unexpected.example.net"
_PLANTED_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class Drift:
    missing: str
    stale: str
    unexpected: str

    def to_json(self) -> dict[str, str]:
        return {"missing": self.missing, "stale": self.stale, "unexpected": self.unexpected}


class NoDriftPossible(ValueError):
    """The store or the dataset holds nothing the drift can be made of (e.g. before the run)."""


def seed_drift(intel: IntelStore, expected: ExpectedOutcome, owner_tag: str, now: datetime) -> Drift:
    ours_active = {obj.value: obj for obj in intel.ours() if obj.status == "active"}
    missing = next((value for value in sorted(expected.active) if value in ours_active), None)
    if missing is None:
        raise NoDriftPossible("no value the pipeline publishes is held active yet: run the pipeline first")
    expired_only = _expired_only(expected) - set(ours_active)
    stale = next((value for value in sorted(expired_only) if classify(value) is not None), None)
    if stale is None:
        raise NoDriftPossible("the dataset has no value whose indicators are all inactive upstream")
    if intel.by_value(UNEXPECTED_VALUE):
        raise NoDriftPossible("the drift was seeded already")
    intel.remove(ours_active[missing].id)
    for value in (stale, UNEXPECTED_VALUE):
        kind = classify(value)
        assert kind is not None
        intel.plant(value, "mal" + ITYPE_SUFFIXES[kind], _attributes(owner_tag, now))
    return Drift(missing, stale, UNEXPECTED_VALUE)


def _expired_only(expected: ExpectedOutcome) -> set[str]:
    """Values all of whose indicators end `expire`."""
    outcomes: dict[str, set[Outcome]] = {}
    for expectation in expected.indicators.values():
        if expectation.canonical_value is not None:
            outcomes.setdefault(expectation.canonical_value, set()).add(expectation.outcome)
    return {value for value, seen in outcomes.items() if seen == {Outcome.EXPIRE}} & set(expected.not_active)


def _attributes(owner_tag: str, now: datetime) -> Attributes:
    return Attributes(
        confidence=90,
        severity="high",
        is_public=False,
        threat_type="malware",
        tags=[{"name": owner_tag}, {"name": "mdti"}],
        expiration_ts=now + _PLANTED_LIFETIME,
    )
