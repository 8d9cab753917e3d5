"""Pass spans and window planning."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from tibridge.collector.settings import CollectingSettings
from tibridge.collector.windows import Window, pass_span, split

NOW = datetime(2026, 11, 15, 12, tzinfo=UTC)
SETTINGS = CollectingSettings(
    overlap=timedelta(minutes=15),
    settle_delay=timedelta(minutes=5),
    initial_lookback=timedelta(days=14),
    window=timedelta(hours=6),
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


def test_split_covers_the_span_exactly_oldest_first() -> None:
    span = Window(NOW - timedelta(hours=13), NOW)
    windows = list(split(span, timedelta(hours=6)))
    assert [w.span for w in windows] == [timedelta(hours=6), timedelta(hours=6), timedelta(hours=1)]
    assert windows[0].start == span.start
    assert windows[-1].end == span.end
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    with pytest.raises(ValueError, match="positive"):
        list(split(span, timedelta(0)))


def test_halves_meet_without_a_gap() -> None:
    window = Window(NOW, NOW + timedelta(seconds=1, microseconds=1))
    first, second = window.halves()
    assert (first.start, first.end == second.start, second.end) == (window.start, True, window.end)
