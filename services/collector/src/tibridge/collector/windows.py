"""Which time span a pass reads and how it is cut into query windows: pure functions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from tibridge.collector.settings import CollectingSettings


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


def split(span: Window, size: timedelta) -> Iterator[Window]:
    """Consecutive windows of at most `size` covering `span` exactly, oldest first."""
    if size <= timedelta(0):
        raise ValueError("the window size must be positive")
    start = span.start
    while start < span.end:
        end = min(start + size, span.end)
        yield Window(start, end)
        start = end
