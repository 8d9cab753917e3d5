"""Every way ThreatStream's end state differs from what a correct run leaves (GET /_sandbox/reconcile).

Judged over the objects tibridge wrote (through the API with its key) against the expected outcome, and over
the foreign entries seeded before the run, which must be byte-for-byte what they were.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tibridge.sandbox.expected import ExpectedOutcome
from tibridge.sandbox.intel import IntelStore

_SHOWN = 5


def _listed(label: str, values: Iterable[object]) -> list[str]:
    values = sorted(str(value) for value in values)
    if not values:
        return []
    more = " …" if len(values) > _SHOWN else ""
    return [f"{len(values)} {label}: {', '.join(values[:_SHOWN])}{more}"]


def reconcile(expected: ExpectedOutcome, intel: IntelStore) -> list[str]:
    ours = list(intel.ours())
    active = [obj for obj in ours if obj.status == "active"]
    active_values = Counter(obj.value for obj in active)
    held = {obj.value for obj in ours}
    never_published = [obj.id for obj in ours if not obj.was_active]
    unexpected_values = held - expected.active - expected.not_active
    wrong_itype = [
        f"{obj.value} ({obj.itype}, expected {expected.itypes[obj.value]})"
        for obj in active
        if obj.value in expected.itypes and obj.itype != expected.itypes[obj.value]
    ]
    wrong_subtype = [
        f"{obj.value[:16]}… ({obj.subtype})"
        for obj in active
        if obj.value in expected.subtypes and str(obj.subtype) != expected.subtypes[obj.value]
    ]
    problems = [
        *_listed("value(s) expected active in ThreatStream but missing", expected.active - active_values.keys()),
        *_listed("value(s) active in ThreatStream but not expected", active_values.keys() - expected.active),
        *_listed("value(s) active more than once in ThreatStream", (v for v, n in active_values.items() if n > 1)),
        *_listed("value(s) that should not be active but are", expected.not_active & active_values.keys()),
        *_listed("object(s) tibridge created without ever publishing them (created inactive)", never_published),
        *_listed("value(s) tibridge wrote that a correct run never sends", unexpected_values),
        *_listed("value(s) under another itype than expected", wrong_itype),
        *_listed("hash(es) without the expected subtype", wrong_subtype),
        *_listed("whitelisted value(s) held although ThreatStream rejects them", held & expected.rejected.keys()),
        *_listed("foreign entr(ies) changed (ids)", intel.foreign_changed()),
    ]
    if intel.counts.duplicates_created:
        problems.append(f"ThreatStream reports {intel.counts.duplicates_created} duplicate creation(s)")
    if pending := intel.pending_approval:
        problems.append(f"{pending} observable(s) still wait for approval")
    return problems
