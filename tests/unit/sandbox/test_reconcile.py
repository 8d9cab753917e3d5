"""The sandbox's own reconciliation: ThreatStream's end state against the expected outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tibridge.sandbox.expected import ExpectedOutcome
from tibridge.sandbox.intel import IntelStore, StoreRules, parse_import
from tibridge.sandbox.reconcile import reconcile
from tibridge.sandbox.seeding import foreign_entries
from tibridge.sandbox.vocabulary import ITYPES, IntelKind

NOW = datetime(2026, 11, 1, tzinfo=UTC)
RULES = StoreRules(itypes=ITYPES, processing=timedelta(0))
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
EXPECTED = ExpectedOutcome(
    indicators={},
    active=frozenset({"203.0.113.9", "2001:db8::1", SHA1}),
    not_active=frozenset({"198.51.100.7"}),
    itypes={"203.0.113.9": "mal_ip", "2001:db8::1": "mal_ipv6", SHA1: "mal_md5"},
    subtypes={SHA1: "SHA1"},
)


def store() -> IntelStore:
    values = [("203.0.113.9", IntelKind.IP), ("198.51.100.7", IntelKind.IP)]
    return IntelStore(lambda: NOW, RULES, lambda: foreign_entries(values, 3, 1.0, RULES, NOW))


def publish(intel: IntelStore, *objects: dict[str, object]) -> None:
    intel.upsert({"meta": {"allow_update": True}, "objects": list(objects)})


def test_a_correct_end_state_reconciles_whatever_foreign_entries_share_its_values() -> None:
    intel = store()
    publish(
        intel,
        {"srcip": "203.0.113.9", "itype": "mal_ip"},
        {"ipv6": "2001:db8::1", "itype": "mal_ipv6"},
        {"md5": SHA1, "itype": "mal_md5", "subtype": "SHA1"},
        {"srcip": "198.51.100.7", "itype": "mal_ip"},
    )
    (stale,) = (obj for obj in intel.ours() if obj.value == "198.51.100.7")
    intel.patch(stale.id, {"status": "inactive"})  # published, then expired upstream: inactive is right
    assert reconcile(EXPECTED, intel) == []


def test_every_kind_of_wrong_end_state_is_named() -> None:
    intel = store()
    publish(intel, {"srcip": "203.0.113.9", "itype": "c2_ip"}, {"md5": SHA1, "itype": "mal_md5"})
    publish(intel, {"srcip": "203.0.113.9", "itype": "scan_ip"})
    intel.import_datatext(parse_import({"datatext": "192.0.2.55", "default_state": "active"}, RULES))
    foreign = next(obj for obj in intel.objects.values() if obj.foreign and obj.editable)
    intel.patch(foreign.id, {"tags": [{"name": "ours-now"}]})
    problems = "\n".join(reconcile(EXPECTED, intel))
    for words in (
        "expected active in ThreatStream but missing: 2001:db8::1",
        "active more than once",
        "a correct run never sends: 192.0.2.55",
        "another itype than expected",
        "without the expected subtype",
        f"foreign entr(ies) changed (ids): {foreign.id}",
    ):
        assert words in problems
