"""Query evaluation over the seeded rows, and the body's timespan."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tibridge.sandbox.dataset import Dataset, generate
from tibridge.sandbox.kql import InFilter, Query, Shape, TimeRange
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


def test_counts_per_bin_start_on_kusto_span_boundaries_and_add_up_to_the_rows(dataset: Dataset) -> None:
    table = build_tables(dataset)[THREAT_INTEL_INDICATORS]
    mdti = InFilter("SourceSystem", frozenset({"Microsoft Defender Threat Intelligence"}), allow_empty=False)
    matching = [row for row in dataset.rows if row.source_system == "Microsoft Defender Threat Intelligence"]
    for span in (timedelta(hours=6), timedelta(days=7)):
        query = Query(THREAT_INTEL_INDICATORS, None, (mdti,), None, Shape.COUNT_BY_BIN, span, "Rows", ordered=True)
        result = table.query(query, None, row_cap=10)  # the row cap limits rows of data, not count bins
        bins = [json.loads(fragment) for fragment in result.fragments]
        assert [name for name, _ in result.columns] == ["TimeGenerated", "Rows"]
        assert sum(n for _, n in bins) == len(matching)
        starts = [datetime.fromisoformat(start) for start, _ in bins]
        assert starts == sorted(starts)
        # bin() counts spans from 0001-01-01, Kusto's epoch: a 7-day bin starts on a Monday.
        assert all((start - datetime(1, 1, 1, tzinfo=UTC)) % span == timedelta(0) for start in starts)
    hourly = timedelta(hours=1)
    unordered = Query(THREAT_INTEL_INDICATORS, None, (mdti,), None, Shape.COUNT_BY_BIN, hourly, "Rows", ordered=False)
    shuffled = [json.loads(fragment)[0] for fragment in table.query(unordered, None, 10).fragments]
    assert shuffled != sorted(shuffled)  # summarize promises no order


def test_a_plain_count_counts_every_matching_row_not_only_the_newest(dataset: Dataset) -> None:
    table = build_tables(dataset)[THREAT_INTEL_INDICATORS]
    window = TimeRange(ANCHOR - timedelta(days=3), ANCHOR)
    result = table.query(Query(THREAT_INTEL_INDICATORS, window, (), None, Shape.COUNT), None, row_cap=10)
    assert json.loads(result.fragments[0]) == [sum(1 for row in dataset.rows if window.start <= row.time_generated)]
