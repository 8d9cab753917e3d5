"""Query evaluation over the seeded rows, and the body's timespan."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tibridge.sandbox.dataset import Dataset, generate
from tibridge.sandbox.kql import InFilter, Query, TimeRange
from tibridge.sandbox.tables import LEGACY_TABLE, THREAT_INTEL_INDICATORS, build_tables, parse_timespan

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(400, seed=3, anchor=ANCHOR)


def ids_of(fragments: list[str]) -> list[str]:
    return [json.loads(fragment)[0] for fragment in fragments]


def test_a_window_keeps_the_newest_row_per_id_in_time_order(dataset: Dataset) -> None:
    table = build_tables(dataset)[THREAT_INTEL_INDICATORS]
    query = Query(THREAT_INTEL_INDICATORS, None, (), "Id")
    result = table.query(query, None, row_cap=10_000)
    assert not result.truncated
    assert ids_of(list(result.fragments)) == sorted(dataset.newest, key=lambda i: dataset.newest[i].time_generated)
    assert [name for name, _ in result.columns[:3]] == ["Id", "TimeGenerated", "Pattern"]
    capped = table.query(query, None, row_cap=5)
    assert capped.truncated
    assert list(capped.fragments) == list(result.fragments)[:5]


def test_filters_and_both_time_bounds_apply(dataset: Dataset) -> None:
    table = build_tables(dataset)[THREAT_INTEL_INDICATORS]
    start, end = ANCHOR - timedelta(days=3), ANCHOR - timedelta(days=1)
    narrower = TimeRange(ANCHOR - timedelta(days=2), ANCHOR)
    query = Query(
        THREAT_INTEL_INDICATORS,
        TimeRange(start, end),
        (InFilter("ObservableKey", frozenset({"url:value"}), allow_empty=True),),
        "Id",
    )
    rows = [json.loads(f) for f in table.query(query, narrower, row_cap=10_000).fragments]
    assert rows
    for row in rows:
        assert row[3] in ("", "url:value")
        assert narrower.start <= datetime.fromisoformat(row[1]) < end


def test_the_legacy_table_maps_the_same_indicators(dataset: Dataset) -> None:
    table = build_tables(dataset)[LEGACY_TABLE]
    result = table.query(Query(LEGACY_TABLE, None, (), "IndicatorId"), None, row_cap=10_000)
    assert set(ids_of(list(result.fragments))) == set(dataset.newest)
    names = [name for name, _ in result.columns]
    assert names[:2] == ["IndicatorId", "TimeGenerated"]
    by_id = {json.loads(f)[0]: dict(zip(names, json.loads(f), strict=True)) for f in result.fragments}
    for indicator_id, row in dataset.newest.items():
        legacy = by_id[indicator_id]
        assert legacy["ConfidenceScore"] == float(row.confidence)
        if row.observable_key == "domain-name:value":
            assert legacy["DomainName"] == row.observable_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("PT3600.0S", TimeRange(NOW - timedelta(hours=1), NOW)),
        ("P1D", TimeRange(NOW - timedelta(days=1), NOW)),
        (
            "2026-10-01T00:00:00Z/2026-10-02T00:00:00Z",
            TimeRange(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)),
        ),
        (
            "2026-10-01T00:00:00.000Z/PT7200.0S",
            TimeRange(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 1, 2, tzinfo=UTC)),
        ),
        (
            "PT1H/2026-10-01T00:00:00Z",
            TimeRange(datetime(2026, 9, 30, 23, tzinfo=UTC), datetime(2026, 10, 1, tzinfo=UTC)),
        ),
    ],
)
def test_timespans_in_every_iso_form(text: str | None, expected: TimeRange | None) -> None:
    assert parse_timespan(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-10-01/soon", "2026-10-01T00:00:00/PT1H"])
def test_bad_timespans_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="timespan"):
        parse_timespan(text, NOW)
