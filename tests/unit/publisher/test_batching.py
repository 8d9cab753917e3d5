"""The batcher: batches that fill, an age limit that bounds latency, an idle upstream that lets the last partial
batch go at once (issue 11 item 3), and coalescing by observable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tibridge.publisher.batching import Batcher

T0 = datetime(2026, 11, 1, tzinfo=UTC)
AGE = 120.0
QUIET = 2.0


def a_batcher(observables: int = 3, messages: int = 10) -> Batcher[str, str, int]:
    return Batcher(observables, messages, AGE, QUIET)


def test_a_batch_is_full_at_its_observable_count() -> None:
    batcher = a_batcher(observables=3)
    assert [batcher.add(f"k{n}", T0, "p", n, now=0.0) for n in range(4)] == [False, False, True, False]
    batch = batcher.take(0.0, upstream_idle=False)
    assert batch is not None
    assert list(batch.entries) == ["k0", "k1", "k2"]
    assert batcher.held == 1


def test_a_batch_is_full_when_the_consumer_can_give_it_no_more_messages() -> None:
    batcher = a_batcher(observables=1000, messages=4)
    full = [batcher.add("same", T0 + timedelta(seconds=n), f"p{n}", n, now=0.0) for n in range(4)]
    assert full == [False, False, False, True]
    batch = batcher.take(0.0, upstream_idle=False)
    assert batch is not None
    assert batch.messages == 4
    assert batch.entries["same"].messages == [0, 1, 2, 3]


def test_while_the_upstream_produces_a_partial_batch_waits_for_its_age() -> None:
    batcher = a_batcher()
    batcher.add("k", T0, "p", 1, now=10.0)
    assert batcher.take(10.0 + QUIET, upstream_idle=False) is None  # quiet, but more is coming
    assert batcher.take(10.0 + AGE - 0.1, upstream_idle=False) is None
    assert batcher.take(10.0 + AGE, upstream_idle=False) is not None


def test_an_idle_upstream_lets_the_partial_batch_go_once_nothing_arrives() -> None:
    batcher = a_batcher()
    batcher.add("a", T0, "p", 1, now=0.0)
    batcher.add("b", T0, "p", 2, now=1.5)
    assert batcher.take(1.5 + QUIET - 0.1, upstream_idle=True) is None  # something arrived a moment ago
    assert batcher.quiet_at() == 1.5 + QUIET
    batch = batcher.take(1.5 + QUIET, upstream_idle=True)
    assert batch is not None
    assert batch.messages == 2
    assert (batcher.held, batcher.age_limit(), batcher.quiet_at()) == (0, None, None)


def test_the_age_limit_counts_from_the_oldest_message() -> None:
    batcher = a_batcher()
    batcher.add("a", T0, "p", 1, now=5.0)
    batcher.add("b", T0, "p", 2, now=50.0)
    assert batcher.age_limit() == 5.0 + AGE


@pytest.mark.parametrize(
    ("hours", "newest"),
    [((3, 9, 5), "h9"), ((9, 3), "h9"), ((1, 1), "h1")],
)
def test_messages_about_one_observable_coalesce_into_the_newest(hours: tuple[int, ...], newest: str) -> None:
    batcher = a_batcher()
    for n, hour in enumerate(hours):
        batcher.add("domain:bad.example.com", T0.replace(hour=hour), f"h{hour}", n, now=0.0)
    (batch,) = batcher.drain()
    (entry,) = batch.entries.values()
    assert (entry.payload, entry.messages) == (newest, list(range(len(hours))))


def test_drain_hands_out_every_batch_due_or_not() -> None:
    batcher = a_batcher(observables=2)
    for n in range(5):
        batcher.add(f"k{n}", T0, "p", n, now=0.0)
    assert [len(batch.entries) for batch in batcher.drain()] == [2, 2, 1]
    assert batcher.held == 0


def test_a_batch_needs_room_and_time() -> None:
    with pytest.raises(ValueError, match="room"):
        Batcher(0, 10, AGE, QUIET)


def test_only_observables_to_write_fill_a_batch_and_a_newer_payload_decides_whether_its_entry_counts() -> None:
    batcher = a_batcher(observables=2, messages=10)
    assert not batcher.add("expired-1", T0, "expire", 1, now=0.0, written=False)
    assert not batcher.add("expired-2", T0, "expire", 2, now=0.0, written=False)
    assert not batcher.add("k", T0, "publish", 3, now=0.0)
    # The newer expiry of "k" takes its place in the batch: one observable to write fewer.
    assert not batcher.add("k", T0 + timedelta(hours=1), "expire", 4, now=0.0, written=False)
    assert not batcher.add("other", T0, "publish", 5, now=0.0)
    # An older publication of "k" does not make it written again.
    assert not batcher.add("k", T0, "publish", 6, now=0.0)
    assert batcher.take(0.0, upstream_idle=False) is None
    assert batcher.add("last", T0, "publish", 7, now=0.0)
    batch = batcher.take(0.0, upstream_idle=False)
    assert batch is not None
    assert [entry.written for entry in batch.entries.values()] == [False, False, False, True, True]
    assert batch.messages == 7
