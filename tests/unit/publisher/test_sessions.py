"""Import sessions followed to their end (issue 10 item 3): reading a session's state, paced polling, and which
observables ThreatStream rejected, as far as a real client can tell (external-apis.md §3: counts only)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tibridge.publisher.sessions import (
    LONGEST_POLL_SECONDS,
    WHITELISTED,
    SessionState,
    SessionStatus,
    attribute,
    poll_delay,
    session_id_of,
    session_state,
)

VALUES = {"a": "1.2.3.4", "b": "bad.example.com", "c": "worse.example.com"}


def test_a_session_state_is_read_from_its_counts() -> None:
    state = session_state({"status": "done", "numIndicators": 2, "numRejected": 1})
    assert state == SessionState(SessionStatus.DONE, 2, 1)
    assert state is not None
    assert state.final
    processing = session_state({"status": "processing", "numIndicators": 0, "numRejected": 0})
    assert processing is not None
    assert not processing.final
    assert session_state({"status": "a-new-one", "numIndicators": "x"}) == SessionState("a-new-one", 0, 0)
    assert session_state({"numIndicators": 1}) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"import_session_id": "17"}, "17"),
        ({"import_session_id": 17}, "17"),
        ({"import_session_id": "../x"}, None),
        ({}, None),
        ([], None),
    ],
)
def test_only_a_plain_session_id_is_followed(body: Any, expected: str | None) -> None:
    assert session_id_of(body) == expected


def test_polling_is_paced_and_bounded() -> None:
    delays = [poll_delay(n) for n in range(20)]
    assert delays[0] == 1.0
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays))
    assert max(delays) == LONGEST_POLL_SECONDS


def test_nothing_rejected_names_nothing() -> None:
    verdicts = attribute("5", SessionState(SessionStatus.DONE, 3, 0), VALUES, None, None)
    assert (dict(verdicts.rejected), verdicts.unattributed) == ({}, 0)


def test_whitelisted_values_explain_the_rejections() -> None:
    verdicts = attribute("5", SessionState(SessionStatus.DONE, 2, 1), VALUES, frozenset({"bad.example.com"}), None)
    assert (dict(verdicts.rejected), verdicts.unattributed) == ({"b": WHITELISTED}, 0)


def test_an_approved_session_shows_what_landed() -> None:
    landed = frozenset({"1.2.3.4", "worse.example.com"})
    verdicts = attribute("5", SessionState(SessionStatus.APPROVED, 2, 1), VALUES, frozenset(), landed)
    assert list(verdicts.rejected) == ["b"]
    assert "import session 5" in verdicts.rejected["b"]


def test_rejections_nobody_can_name_are_counted() -> None:
    verdicts = attribute("5", SessionState(SessionStatus.DONE, 1, 2), VALUES, frozenset({"1.2.3.4"}), None)
    assert (dict(verdicts.rejected), verdicts.unattributed) == ({"a": WHITELISTED}, 1)


def test_a_session_that_took_nothing_rejects_every_observable() -> None:
    verdicts = attribute("5", SessionState(SessionStatus.ERRORS, 0, 3), VALUES, frozenset({"1.2.3.4"}), None)
    assert verdicts.rejected["a"] == WHITELISTED
    assert verdicts.rejected["b"] == "ThreatStream rejected every observable of import session 5 (status errors)"
    assert verdicts.unattributed == 0
