"""The data generator and the expected outcome it reports."""

from __future__ import annotations

import base64
import ipaddress
import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tibridge.common.contracts import SCORABLE_TYPES, Classification, HashAlgorithm, ObservableType, Reputation
from tibridge.sandbox.dataset import (
    HASH_KEYS,
    MDTI_SOURCE_SYSTEMS,
    Dataset,
    dump_rows,
    generate,
    hash_algorithm_of_key,
    is_supported_key,
    load_rows,
)
from tibridge.sandbox.expected import ExpectedOutcomeUnavailable, Outcome, expected_outcome
from tibridge.sandbox.intel import StoreRules
from tibridge.sandbox.reputation import ReputationModel
from tibridge.sandbox.vocabulary import ITYPES, IntelKind

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(3000, seed=11, anchor=ANCHOR)


def test_the_same_seed_gives_the_same_rows_scores_and_outcome(dataset: Dataset) -> None:
    again = generate(3000, seed=11, anchor=ANCHOR)
    assert again.rows == dataset.rows
    assert again.truths == dataset.truths
    model = ReputationModel(11)
    assert expected_outcome(again, ReputationModel(11)).to_json() == expected_outcome(dataset, model).to_json()
    assert generate(3000, seed=12, anchor=ANCHOR).rows != dataset.rows


def test_rows_lie_in_the_window_sorted_with_weekly_copies(dataset: Dataset) -> None:
    times = [row.time_generated for row in dataset.rows]
    assert times == sorted(times)
    assert ANCHOR - timedelta(days=14) <= times[0]
    assert times[-1] < ANCHOR
    copies: dict[str, list[datetime]] = defaultdict(list)
    for row in dataset.rows:
        copies[row.id].append(row.time_generated)
    assert len(copies) == 3000
    republished = [times for times in copies.values() if len(times) > 1]
    assert len(republished) > 1000
    for times in republished:
        assert all(timedelta(days=6) < b - a < timedelta(days=8) for a, b in itertools.pairwise(times))


def test_only_the_newest_copy_is_revoked_and_modified_grows(dataset: Dataset) -> None:
    by_id: dict[str, list[bool]] = defaultdict(list)
    for row in dataset.rows:
        by_id[row.id].append(row.revoked)
        assert row.data["revoked"] == row.revoked
    assert any(flags[-1] and len(flags) > 1 for flags in by_id.values())
    assert all(not any(flags[:-1]) for flags in by_id.values())


def test_the_mix_holds_every_kind_of_row(dataset: Dataset) -> None:
    outcome = expected_outcome(dataset, ReputationModel(11))
    reasons = outcome.reasons
    for outcome_kind, reason in [
        (Outcome.IGNORED, "source_not_mdti"),
        (Outcome.IGNORED, "observable_key_not_supported"),
        (Outcome.REJECT, "invalid_value"),
        (Outcome.REJECT, "non_global_ip"),
        (Outcome.REJECT, "unsupported_type"),
        (Outcome.REJECT, "unparsed_pattern"),
        (Outcome.EXPIRE, "revoked"),
        (Outcome.EXPIRE, "deleted"),
        (Outcome.EXPIRE, "inactive"),
        (Outcome.EXPIRE, "expired"),
        (Outcome.DROP, "below_threshold"),
        (Outcome.DROP, "no_reputation"),
        (Outcome.DROP, "unscorable_type"),
        (Outcome.PUBLISH, "score_at_or_above_threshold"),
    ]:
        assert reasons[outcome_kind][reason] > 0, (outcome_kind, reason)
    types = {e.observable_type for e in outcome.indicators.values()}
    assert set(ObservableType) <= types
    values = [row.observable_value for row in dataset.rows]
    assert any("[.]" in v for v in values)
    assert any(v.startswith("hxxp") for v in values)
    assert any(v.endswith(".") for v in values)
    assert any(not v.isascii() for v in values)
    assert any(row.pattern and not row.observable_key for row in dataset.rows)
    assert {row.source_system for row in dataset.rows} > set(MDTI_SOURCE_SYSTEMS)


def test_canonical_values_follow_the_rules(dataset: Dataset) -> None:
    assert dataset.truths is not None
    for truth in dataset.truths.values():
        value = truth.canonical_value
        if value is None:
            continue
        if truth.observable_type in (ObservableType.IPV4, ObservableType.IPV6):
            assert value == str(ipaddress.ip_address(value))
        elif truth.observable_type is ObservableType.DOMAIN:
            assert value == value.lower()
            assert value.isascii()
            assert not value.endswith(".")
        elif truth.observable_type is ObservableType.FILE_HASH:
            assert value == value.lower()


def test_repeated_values_never_conflict(dataset: Dataset) -> None:
    outcome = expected_outcome(dataset, ReputationModel(11))
    assert not outcome.active & outcome.not_active
    by_value: dict[str, set[Outcome]] = defaultdict(set)
    for expectation in outcome.indicators.values():
        if expectation.canonical_value and expectation.outcome is not Outcome.IGNORED:
            by_value[expectation.canonical_value].add(expectation.outcome)
    assert all(len(outcomes) == 1 for outcomes in by_value.values())
    assert sum(1 for e in outcome.indicators.values() if e.canonical_value in outcome.active) > len(outcome.active)


def test_policy_parameters_change_the_outcome(dataset: Dataset) -> None:
    model = ReputationModel(11)
    default = expected_outcome(dataset, model)
    forwarded = expected_outcome(dataset, model, forward_unscorable=True)
    assert (
        forwarded.counts[Outcome.PUBLISH]
        == default.counts[Outcome.PUBLISH] + default.reasons[Outcome.DROP]["unscorable_type"]
    )
    lenient = expected_outcome(dataset, model, threshold=50)
    assert lenient.counts[Outcome.PUBLISH] > default.counts[Outcome.PUBLISH]
    only_malicious = expected_outcome(dataset, model, threshold=50, allowed_classifications=[Classification.MALICIOUS])
    assert only_malicious.reasons[Outcome.DROP]["classification_not_allowed"] > 0
    keep_private = expected_outcome(dataset, model, drop_non_global=False)
    assert keep_private.reasons[Outcome.REJECT]["non_global_ip"] == 0


def test_pinned_reputations_decide_the_verdict(dataset: Dataset) -> None:
    assert dataset.truths is not None
    scorable = next(
        (indicator_id, t.canonical_value)
        for indicator_id, t in dataset.truths.items()
        if t.observable_type is ObservableType.DOMAIN
        and t.rejection is None
        and dataset.newest[indicator_id].is_active
        and not dataset.newest[indicator_id].revoked
        and not dataset.newest[indicator_id].is_deleted
        and dataset.newest[indicator_id].source_system in MDTI_SOURCE_SYSTEMS
        and (dataset.newest[indicator_id].valid_until or ANCHOR) >= ANCHOR
    )
    indicator_id, value = scorable
    assert value is not None
    bad = Reputation(score=90, classification=Classification.MALICIOUS)
    assert (
        expected_outcome(dataset, ReputationModel(11, {value: bad})).indicators[indicator_id].outcome is Outcome.PUBLISH
    )
    assert (
        expected_outcome(dataset, ReputationModel(11, {value: None})).indicators[indicator_id].reason == "no_reputation"
    )


def test_rows_round_trip_through_jsonl_and_serve_without_an_outcome(dataset: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    dump_rows(dataset.rows[:50], path)
    loaded = load_rows(path)
    assert loaded.rows == dataset.rows[:50]
    with pytest.raises(ExpectedOutcomeUnavailable):
        expected_outcome(loaded, ReputationModel(11))


def test_only_supported_keys_or_patterns_reach_the_scorer(dataset: Dataset) -> None:
    outcome = expected_outcome(dataset, ReputationModel(11))
    for indicator_id, row in dataset.newest.items():
        if row.observable_key and not is_supported_key(row.observable_key):
            assert outcome.indicators[indicator_id].outcome is Outcome.IGNORED


def test_ids_are_shaped_like_the_real_table(dataset: Dataset) -> None:
    """external-apis.md §1: `Id` is `<base64 of the source>---indicator--<uuid>`; Data.id stays the STIX id."""
    for row in dataset.rows[:500]:
        encoded, separator, stix_id = row.id.partition("---")
        assert separator
        assert stix_id.startswith("indicator--")
        assert base64.b64decode(encoded).decode() == row.source
        assert row.data["id"] == stix_id


def test_hash_keys_come_in_every_producer_spelling_sha512_included(dataset: Dataset) -> None:
    """external-apis.md §1: ObservableKey is whatever the producer wrote, e.g. `file:hashes.'SHA256'`."""
    keys = {row.observable_key for row in dataset.rows if row.observable_key.startswith("file:hashes.")}
    assert keys == {key for spellings in HASH_KEYS.values() for key in spellings}
    assert {hash_algorithm_of_key(key) for key in keys} == set(HashAlgorithm)
    sha512 = [t for t in (dataset.truths or {}).values() if t.hash_algorithm is HashAlgorithm.SHA512]
    assert sha512
    assert all(len(str(t.canonical_value)) == 128 for t in sha512 if t.canonical_value)


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [
        ("file:hashes.MD5", HashAlgorithm.MD5),
        ("file:hashes.'SHA-256'", HashAlgorithm.SHA256),
        ("file:hashes.SHA256", HashAlgorithm.SHA256),
        ("file:hashes.'SHA512'", HashAlgorithm.SHA512),
        ("file:hashes.'SSDEEP'", None),
        ("url:value", None),
    ],
)
def test_hash_keys_are_read_by_prefix_and_normalised(key: str, algorithm: HashAlgorithm | None) -> None:
    assert hash_algorithm_of_key(key) is algorithm


def test_expected_itypes_follow_threatstreams_vocabulary(dataset: Dataset) -> None:
    """external-apis.md §3: mal_ for malicious (or unscored), suspicious_ where the kind has it, IPv6 under _ipv6."""
    model = ReputationModel(11)
    outcome = expected_outcome(dataset, model, threshold=50, forward_unscorable=True)
    assert outcome.itypes.keys() == outcome.active
    kinds = {expectation.canonical_value: expectation for expectation in outcome.indicators.values()}
    for value, itype in outcome.itypes.items():
        expectation = kinds[value]
        assert itype in ITYPES
        reputation = model(value) if expectation.observable_type in SCORABLE_TYPES else None
        graded_down = reputation is not None and reputation.classification != "malicious"
        if expectation.observable_type is ObservableType.IPV6:
            assert itype == "mal_ipv6"  # ThreatStream has no suspicious_ipv6
        elif expectation.observable_type is ObservableType.FILE_HASH:
            assert (itype, outcome.subtypes[value]) == (
                "mal_md5",
                {32: "MD5", 40: "SHA1", 64: "SHA256", 128: "SHA512"}[len(value)],
            )
        else:
            assert itype.startswith("suspicious_" if graded_down else "mal_")
    assert {itype.split("_", 1)[0] for itype in outcome.itypes.values()} == {"mal", "suspicious"}
    extra = StoreRules(itypes={**ITYPES, "suspicious_ipv6": IntelKind.IPV6})
    widened = expected_outcome(dataset, model, threshold=50, forward_unscorable=True, threatstream=extra)
    assert "suspicious_ipv6" in widened.itypes.values()


def test_whitelisted_values_are_expected_rejected_by_threatstream_not_active(dataset: Dataset) -> None:
    plain = expected_outcome(dataset, ReputationModel(11))
    chosen = sorted(plain.active)[:2]
    rules = StoreRules(itypes=ITYPES, whitelist=frozenset(chosen))
    outcome = expected_outcome(dataset, ReputationModel(11), threatstream=rules)
    assert outcome.rejected == dict.fromkeys(chosen, "whitelisted")
    assert outcome.active == plain.active - set(chosen)
    assert not set(chosen) & outcome.not_active
