"""What tibridge recognises as its own in ThreatStream's search answers, and the index kept current from them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.publisher import PUBLISHING, search_object, search_page
from tibridge.publisher.ownership import OwnershipIndex, owned_object, read_page

IP = "203.0.113.7"


def test_an_object_of_ours_is_read_with_what_the_planner_compares() -> None:
    owned = owned_object(search_object(7, IP, "mal_ip", confidence=80, severity="high", tlp="green"), PUBLISHING)
    assert owned is not None
    assert (owned.id, owned.value, owned.itype, owned.status, owned.update_id) == (7, IP, "mal_ip", "active", 1007)
    assert (owned.confidence, owned.severity, owned.tlp, owned.tags) == (
        80,
        "high",
        "green",
        frozenset({"tibridge", "mdti"}),
    )
    assert owned.expiration is not None
    assert owned.expiration.isoformat() == "2027-01-30T00:00:00+00:00"


@pytest.mark.parametrize(
    "change",
    [
        {"tags": [{"name": "mdti"}]},  # another source stamps mdti too; only the owner tag is ours
        {"tags": None},
        {"itype": "scan_ip"},
        {"is_public": True},
        {"is_editable": False},
        {"id": "7"},
        {"update_id": None},
    ],
)
def test_anything_without_our_stamps_is_not_ours(change: dict[str, Any]) -> None:
    assert owned_object({**search_object(7, IP, "mal_ip"), **change}, PUBLISHING) is None


def test_a_page_says_whether_more_follow() -> None:
    full = read_page(search_page(search_object(1, IP, "mal_ip"), more=True), PUBLISHING)
    last = read_page(search_page(search_object(2, IP, "mal_ip")), PUBLISHING)
    assert full is not None
    assert last is not None
    assert (full.last, last.last, last.highest_update_id, last.values) == (False, True, 1002, frozenset({IP}))
    assert read_page({"objects": "nope"}, PUBLISHING) is None
    assert read_page(["not", "a", "page"], PUBLISHING) is None


def test_the_index_keeps_the_newest_state_of_our_active_and_false_positive_objects() -> None:
    index = OwnershipIndex()
    first = read_page(search_page(search_object(1, IP, "mal_ip"), search_object(2, IP, "suspicious_ip")), PUBLISHING)
    assert first is not None
    index.apply(first)
    assert sorted(obj.id for obj in index.held(IP)) == [1, 2]
    later = read_page(
        search_page(
            search_object(1, IP, "mal_ip", status="inactive", update_id=2001),
            search_object(2, IP, "suspicious_ip", status="falsepos", update_id=2002),
        ),
        PUBLISHING,
    )
    assert later is not None
    index.apply(later)
    assert [(obj.id, obj.status) for obj in index.held(IP)] == [(2, "falsepos")]
    assert (index.watermark, len(index)) == (2002, 1)
    index.forget(index.held(IP))
    assert (index.held(IP), len(index)) == ([], 0)
