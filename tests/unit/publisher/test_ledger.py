"""The settlement ledger and the revision record: keyed by observable, no object identities, no callbacks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tibridge.publisher.ledger import Ledger, Resolution, Revisions

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_an_observable_settles_once_after_its_last_request_with_the_most_cautious_end() -> None:
    ledger: Ledger[str, int] = Ledger()
    ledger.open("a", [1, 2], T0)
    ledger.open("b", [3], T0)
    ledger.claim(["a", "b"])
    ledger.claim(["a"])
    ledger.answer(["a", "b"], Resolution.COMPLETE)
    with pytest.raises(RuntimeError, match="unanswered"):
        list(ledger.settled())
    ledger.answer(["a"], Resolution.DEAD_LETTER, "ThreatStreamRejected", "400")
    settled = {one.key: one.account for one in ledger.settled()}
    assert (settled["a"].resolution, settled["a"].description, settled["a"].messages) == (
        Resolution.DEAD_LETTER,
        "400",
        [1, 2],
    )
    assert settled["b"].resolution is Resolution.COMPLETE
    assert ledger.messages == 3


def test_giving_back_wins_over_dead_lettering_and_completing() -> None:
    ledger: Ledger[str, int] = Ledger()
    ledger.open("a", [1], T0)
    ledger.decide("a", Resolution.DEAD_LETTER, "r", "d")
    ledger.decide("a", Resolution.ABANDON)
    ledger.decide("a", Resolution.COMPLETE)
    assert ledger.accounts["a"].resolution is Resolution.ABANDON
    ledger.claim(["a"])
    ledger.give_back()
    assert [one.account.resolution for one in ledger.settled()] == [Resolution.ABANDON]


def test_a_revision_older_than_one_applied_is_stale() -> None:
    revisions: Revisions[str] = Revisions(capacity=2)
    revisions.record("a", T0 + timedelta(hours=2))
    revisions.record("a", T0)  # an older one applied later never moves it back
    assert revisions.is_stale("a", T0 + timedelta(hours=1))
    assert not revisions.is_stale("a", T0 + timedelta(hours=2))
    assert not revisions.is_stale("b", T0)
    revisions.record("b", T0)
    revisions.record("c", T0)
    assert not revisions.is_stale("a", T0)  # the oldest record made room
