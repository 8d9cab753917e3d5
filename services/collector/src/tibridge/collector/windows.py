"""Which time span a pass reads and how it is cut into query windows by the rows they hold: pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tibridge.collector.settings import CollectingSettings

# Bins a count query asks for at most: a 14-day span in 20-minute bins, a small answer either way.
MAX_BINS = 1000
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, order=True)
class Window:
    """`start <= TimeGenerated < end`."""

    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def halves(self) -> tuple[Window, Window]:
        middle = self.start + (self.span // 2)
        return Window(self.start, middle), Window(middle, self.end)


def pass_span(settings: CollectingSettings, now: datetime, watermark: datetime | None) -> Window | None:
    """The span one pass reads, or None when there is nothing settled to read yet.

    The newest `settle_delay` is left alone (rows are still arriving); a backfill (`since`) overrides the
    watermark; otherwise the pass resumes at the watermark minus the `overlap` (rows are ingested late), and the
    very first pass starts `initial_lookback` ago.
    """
    end = now - settings.settle_delay
    if settings.since is not None:
        start = now - settings.since
    elif watermark is not None:
        start = watermark - settings.overlap
    else:
        start = now - settings.initial_lookback
    return Window(start, end) if start < end else None


def bin_size_for(window: Window, smallest: timedelta) -> timedelta:
    """The bin size that counts `window` in at most MAX_BINS bins: whole seconds, never below `smallest`."""
    size = max(-(-window.span // MAX_BINS), smallest)
    return -(-size // _SECOND) * _SECOND if size >= _SECOND else size


@dataclass(frozen=True)
class Bin:
    """`rows` rows (every re-published copy) with `start <= TimeGenerated < start + the bin size`; bins count
    from Kusto's epoch, 0001-01-01, so the first bin of a window may start before it."""

    start: datetime
    rows: int


@dataclass(frozen=True)
class Planned:
    """A window cut from a count: `rows` rows by the count (an upper bound of what a read returns, which has the
    newest row per indicator only); `dense` when it is a single bin holding more than the limit."""

    window: Window
    rows: int
    dense: bool = False


def plan_from_counts(window: Window, bins: Sequence[Bin], bin_size: timedelta, limit: int) -> list[Planned]:
    """Consecutive windows covering `window` exactly, oldest first, each holding at most `limit` rows by the
    counts (`bins` of `bin_size`, oldest first, empty ones left out); cuts fall on bin edges, and a bin that
    alone holds more is a window of its own, `dense`."""
    planned: list[Planned] = []
    start, rows = window.start, 0

    def close(end: datetime) -> None:
        nonlocal start, rows
        if end > start:
            planned.append(Planned(Window(start, end), rows))
        start, rows = end, 0

    for found in bins:
        bin_start, count = found.start, found.rows
        edge = max(bin_start, window.start)
        if count > limit:
            close(edge)
            end = min(bin_start + bin_size, window.end)
            planned.append(Planned(Window(edge, end), count, dense=True))
            start = end
        elif rows + count > limit:
            close(edge)
            rows = count
        else:
            rows += count
    close(window.end)
    return planned
