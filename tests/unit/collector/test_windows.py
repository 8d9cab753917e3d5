"""Pass spans and planning windows by the rows they hold."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tibridge.collector.settings import CollectingSettings
from tibridge.collector.windows import MAX_BINS, Bin, Planned, Window, bin_size_for, pass_span, plan_from_counts

NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)
SETTINGS = CollectingSettings(
    overlap=timedelta(minutes=15),
    settle_delay=timedelta(minutes=5),
    initial_lookback=timedelta(days=14),
)


def test_the_first_pass_starts_at_the_initial_lookback() -> None:
    assert pass_span(SETTINGS, NOW, None) == Window(NOW - timedelta(days=14), NOW - timedelta(minutes=5))


def test_later_passes_resume_at_the_watermark_minus_the_overlap() -> None:
    watermark = NOW - timedelta(hours=1)
    span = pass_span(SETTINGS, NOW, watermark)
    assert span == Window(watermark - timedelta(minutes=15), NOW - timedelta(minutes=5))


def test_since_overrides_the_watermark_for_a_backfill() -> None:
    span = pass_span(SETTINGS.model_copy(update={"since": timedelta(days=30)}), NOW, NOW - timedelta(hours=1))
    assert span is not None
    assert span.start == NOW - timedelta(days=30)


def test_nothing_to_read_until_the_settle_delay_has_passed() -> None:
    watermark = NOW - timedelta(minutes=5)
    no_overlap = CollectingSettings(overlap=timedelta(0), settle_delay=timedelta(minutes=5))
    assert pass_span(no_overlap, NOW, watermark) is None


def test_bins_are_whole_seconds_and_at_most_max_bins_per_window() -> None:
    fortnight = Window(NOW - timedelta(days=14), NOW)
    assert bin_size_for(fortnight, timedelta(seconds=1)) == timedelta(seconds=1210)
    assert bin_size_for(Window(NOW, NOW + timedelta(minutes=5)), timedelta(seconds=1)) == timedelta(seconds=1)
    assert bin_size_for(Window(NOW, NOW + timedelta(seconds=1)), timedelta(milliseconds=1)) == timedelta(milliseconds=1)
    assert bin_size_for(Window(NOW, NOW + timedelta(minutes=5)), timedelta(minutes=2)) == timedelta(minutes=2)


HOUR = timedelta(hours=1)
DAY = Window(NOW - timedelta(days=1), NOW)


def bins(*rows: int) -> list[Bin]:
    """Hourly bins over DAY (a 0 leaves that hour out, as a count answers)."""
    return [Bin(DAY.start + index * HOUR, count) for index, count in enumerate(rows) if count]


def test_bins_are_gathered_into_windows_of_at_most_the_limit() -> None:
    planned = plan_from_counts(DAY, bins(4, 4, 0, 3, 9, 1), HOUR, limit=10)
    assert planned == [
        Planned(Window(DAY.start, DAY.start + 3 * HOUR), 8),
        Planned(Window(DAY.start + 3 * HOUR, DAY.start + 4 * HOUR), 3),
        Planned(Window(DAY.start + 4 * HOUR, DAY.end), 10),
    ]


def test_a_bin_over_the_limit_is_a_dense_window_of_its_own() -> None:
    planned = plan_from_counts(DAY, bins(2, 30, 2), HOUR, limit=10)
    assert planned == [
        Planned(Window(DAY.start, DAY.start + HOUR), 2),
        Planned(Window(DAY.start + HOUR, DAY.start + 2 * HOUR), 30, dense=True),
        Planned(Window(DAY.start + 2 * HOUR, DAY.end), 2),
    ]


def test_no_rows_at_all_is_one_empty_window() -> None:
    assert plan_from_counts(DAY, [], HOUR, limit=10) == [Planned(DAY, 0)]


def test_the_first_bin_may_start_before_the_window() -> None:
    window = Window(DAY.start + timedelta(minutes=30), DAY.end)
    planned = plan_from_counts(window, [Bin(DAY.start, 20), Bin(DAY.start + HOUR, 1)], HOUR, limit=10)
    assert planned == [
        Planned(Window(window.start, DAY.start + HOUR), 20, dense=True),
        Planned(Window(DAY.start + HOUR, DAY.end), 1),
    ]


@settings(max_examples=200, deadline=None)
# At most 24 hourly bins: a count over the day never answers a bin that starts at or after its end.
@given(counts=st.lists(st.integers(0, 40), max_size=24), limit=st.integers(1, 25))
def test_a_plan_covers_the_window_exactly_and_keeps_to_the_limit(counts: list[int], limit: int) -> None:
    planned = plan_from_counts(DAY, bins(*counts), HOUR, limit)
    assert planned[0].window.start == DAY.start
    assert planned[-1].window.end == DAY.end
    assert all(a.window.end == b.window.start for a, b in itertools.pairwise(planned))
    assert all(p.rows <= limit or p.dense for p in planned)
    assert all(p.window.span <= HOUR for p in planned if p.dense)
    assert sum(p.rows for p in planned) == sum(counts)
    assert len(planned) <= 2 * len(counts) + 1
    assert MAX_BINS >= 1


def test_halves_meet_without_a_gap() -> None:
    window = Window(NOW, NOW + timedelta(seconds=1, microseconds=1))
    first, second = window.halves()
    assert (first.start, first.end == second.start, second.end) == (window.start, True, window.end)
