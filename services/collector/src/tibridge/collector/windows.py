"""Which time span a pass reads and how it is cut into query windows: pure functions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta


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


@dataclass(frozen=True)
class SpanPolicy:
    overlap: timedelta  # re-read before the watermark: rows are ingested late
    settle_delay: timedelta  # leave the newest minutes alone: they are still arriving
    initial_lookback: timedelta  # where the very first pass starts
    window: timedelta  # largest query window


def pass_span(policy: SpanPolicy, now: datetime, watermark: datetime | None, since: timedelta | None) -> Window | None:
    """The span one pass reads, or None when there is nothing settled to read yet.

    `since` (a backfill) overrides the watermark; otherwise the pass resumes at the watermark minus the overlap.
    """
    end = now - policy.settle_delay
    if since is not None:
        start = now - since
    elif watermark is not None:
        start = watermark - policy.overlap
    else:
        start = now - policy.initial_lookback
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
