"""Batching by size and age, coalescing, and the grouping of a batch into import sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.publisher import INDICATOR_TIME, MALICIOUS, MAPPING, SUSPICIOUS, scored_indicator
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
from tibridge.publisher.batching import (
    Batcher,
    bucket_confidence,
    bucket_expiration,
    chunked,
    import_groups,
)
from tibridge.publisher.mapping import IntelObject, intel_objects

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def later(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_batch_is_ready_once_it_holds_the_configured_count() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=3, max_age_seconds=60)
    assert not batcher.add("publish", "a", T0, "A", "m1", now=0)
    assert not batcher.add("publish", "b", T0, "B", "m2", now=1)
    assert batcher.add("publish", "c", T0, "C", "m3", now=2)
    (batch,) = batcher.ready(now=2)
    assert (batch.lane, [e.payload for e in batch.entries], batch.messages) == (
        "publish",
        ["A", "B", "C"],
        ["m1", "m2", "m3"],
    )
    assert batcher.held == 0
    assert batcher.next_due() is None


def test_a_batch_is_ready_once_its_oldest_message_is_old_enough() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=100, max_age_seconds=5)
    batcher.add("publish", "a", T0, "A", "m1", now=10)
    batcher.add("publish", "b", T0, "B", "m2", now=13)
    assert batcher.next_due() == 15
    assert batcher.ready(now=14.9) == []
    (batch,) = batcher.ready(now=15)
    assert batch.messages == ["m1", "m2"]


def test_messages_about_one_observable_coalesce_and_the_newest_wins() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=3, max_age_seconds=60)
    batcher.add("publish", "a", later(10), "A@10", "m1", now=0)
    batcher.add("publish", "a", later(5), "A@5", "m2", now=1)  # older: rides along, does not win
    assert batcher.add("publish", "a", later(20), "A@20", "m3", now=2)  # three messages fill the batch
    (batch,) = batcher.ready(now=2)
    (entry,) = batch.entries
    assert (entry.payload, entry.messages) == ("A@20", ["m1", "m2", "m3"])


def test_a_newer_expiry_takes_the_observable_out_of_the_publish_batch() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=10, max_age_seconds=5)
    batcher.add("publish", "a", later(10), "publish A", "m1", now=0)
    batcher.add("publish", "b", later(10), "publish B", "m2", now=1)
    batcher.add("expire", "a", later(20), "expire A", "m3", now=3)
    batches = {batch.lane: batch for batch in batcher.ready(now=5)}
    assert [e.payload for e in batches["expire"].entries] == ["expire A"]
    assert batches["expire"].messages == ["m1", "m3"]
    assert batches["publish"].messages == ["m2"]


def test_an_older_expiry_does_not_undo_a_newer_publication() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=10, max_age_seconds=5)
    batcher.add("publish", "a", later(20), "publish A", "m1", now=0)
    batcher.add("expire", "a", later(10), "expire A", "m2", now=1)
    (batch,) = batcher.drain()
    assert (batch.lane, batch.entries[0].payload, batch.messages) == ("publish", "publish A", ["m1", "m2"])


def test_lanes_fill_and_age_independently_and_drain_takes_everything() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=2, max_age_seconds=5)
    batcher.add("publish", "a", T0, "A", "m1", now=0)
    batcher.add("expire", "b", T0, "B", "m2", now=3)
    assert [b.lane for b in batcher.ready(now=5)] == ["publish"]
    assert batcher.next_due() == 8
    assert batcher.held == 1
    assert [b.messages for b in batcher.drain()] == [["m2"]]


def test_a_new_batch_starts_after_a_full_one_is_sealed() -> None:
    batcher: Batcher[str, str, str] = Batcher(max_messages=2, max_age_seconds=5)
    for number in range(5):
        batcher.add("publish", f"k{number}", T0, str(number), f"m{number}", now=number)
    assert [b.messages for b in batcher.ready(now=4)] == [["m0", "m1"], ["m2", "m3"]]
    assert batcher.held == 1


@pytest.mark.parametrize(("confidence", "expected"), [(None, None), (0, 0), (4, 0), (5, 5), (99, 95), (100, 100)])
def test_confidence_rounds_down_to_fives(confidence: int | None, expected: int | None) -> None:
    assert bucket_confidence(confidence) == expected


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2027, 1, 15, 8, 0, tzinfo=UTC), datetime(2027, 1, 16, tzinfo=UTC)),
        (datetime(2027, 1, 15, 0, 0, tzinfo=UTC), datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2027, 1, 15, 23, 59, 59, tzinfo=UTC), datetime(2027, 1, 16, tzinfo=UTC)),
    ],
)
def test_an_expiry_rounds_up_to_midnight_utc(moment: datetime, expected: datetime) -> None:
    assert bucket_expiration(moment) == expected


def test_chunks_keep_order_and_size() -> None:
    assert [list(chunk) for chunk in chunked([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


def objects_of(*indicators: IndicatorScored) -> list[IntelObject]:
    return [obj for indicator in indicators for obj in intel_objects(indicator, MAPPING, INDICATOR_TIME)]


def test_import_groups_hold_only_observables_one_session_describes_correctly() -> None:
    until = datetime(2027, 3, 1, 10, tzinfo=UTC)
    same_day = datetime(2027, 3, 1, 18, tzinfo=UTC)
    rules_a = Reputation(
        score=91, classification=Classification.MALICIOUS, rules=(ReputationRule(name="A", severity=RuleSeverity.HIGH),)
    )
    rules_b = Reputation(
        score=93, classification=Classification.MALICIOUS, rules=(ReputationRule(name="B", severity=RuleSeverity.HIGH),)
    )
    objects = objects_of(
        scored_indicator(1, rules_a, valid_until=until),
        scored_indicator(2, rules_b, valid_until=same_day),  # same session: score 93 → 90 bucket, same day
        scored_indicator(3, rules_a, valid_until=until, tlp=Tlp.RED),  # another TLP
        scored_indicator(4, SUSPICIOUS, valid_until=until),  # another itype for the same kind
        scored_indicator(5, MALICIOUS, valid_until=until + timedelta(days=1)),  # another day
    )
    groups = import_groups(objects, lambda obj: obj)
    assert [[member.observable.value for member in group.members] for group in groups] == [
        ["10.0.0.1", "10.0.0.2"],
        ["10.0.0.3"],
        ["10.0.0.4"],
        ["10.0.0.5"],
    ]
    session = groups[0].view
    assert (session.confidence, session.expiration) == (90, datetime(2027, 3, 2, tzinfo=UTC))
    # Only the tags both observables carry: each one's own rule is left out.
    assert [tag.name for tag in session.tags] == ["mdti", "Microsoft Defender Threat Intelligence"]


def test_expiries_group_by_itype_alone_and_keep_their_expiry() -> None:
    objects = objects_of(
        scored_indicator(1, None, verdict=Verdict.EXPIRE, confidence=12, tlp=Tlp.RED),
        scored_indicator(2, None, verdict=Verdict.EXPIRE, confidence=88, tlp=Tlp.GREEN),
    )
    groups = import_groups(objects, lambda obj: obj)
    assert [(group.mappings, len(group.members)) for group in groups] == [
        ({"ip_mapping": "mal_ip"}, 2),
        ({"ip_mapping": "suspicious_ip"}, 2),
    ]
    assert {group.view.expiration for group in groups} == {INDICATOR_TIME}


def test_observables_of_different_kinds_share_one_session_with_a_mapping_each() -> None:
    domain = Observable(type=ObservableType.DOMAIN, value="bad.example.com")
    url = Observable(type=ObservableType.URL, value="http://bad.example.com/x")
    objects = objects_of(
        scored_indicator(1, MALICIOUS),
        scored_indicator(domain, MALICIOUS),
        scored_indicator(url, MALICIOUS),
        scored_indicator(2, MALICIOUS),
    )
    [group] = import_groups(objects, lambda obj: obj)
    assert group.mappings == {"ip_mapping": "mal_ip", "domain_mapping": "mal_domain", "url_mapping": "mal_url"}
    assert len(group.members) == 4


@pytest.mark.parametrize("days", [1, 7, 30])
def test_a_rounded_expiry_is_never_earlier_and_at_most_the_rounding_later(days: int) -> None:
    for hours in range(0, 24 * 60, 7):
        moment = T0 + timedelta(hours=hours, minutes=13)
        rounded = bucket_expiration(moment, days)
        assert moment <= rounded < moment + timedelta(days=days)
        assert rounded == bucket_expiration(rounded, days), "a rounded expiry is its own bucket"


def test_expiring_observables_mapped_within_a_minute_share_their_import_sessions() -> None:
    """An expiry is 'now' at mapping time; it must not split a batch into one session per observable."""
    start = INDICATOR_TIME.replace(second=5)
    objects = [
        obj
        for n in range(40)
        for obj in intel_objects(
            scored_indicator(n, None, verdict=Verdict.EXPIRE), MAPPING, start + timedelta(seconds=n)
        )
    ]
    groups = import_groups(objects, lambda obj: obj, expiry_days=7)
    assert [group.mappings["ip_mapping"] for group in groups] == ["mal_ip", "suspicious_ip"]
    assert all(group.view.expiration <= start for group in groups), "an expiry never lies in the future"
