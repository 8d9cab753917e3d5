"""The backfill's bar on a terminal: the counted rows as its total, advanced window by window, stopped at the end."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from rich.console import Console

from tibridge.cli.backfill import BarProgress
from tibridge.collector.plan import Rates, plan_backfill
from tibridge.collector.windows import Bin, Window

SPAN = Window(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))


def test_the_bar_counts_the_plans_rows_to_the_end() -> None:
    out = io.StringIO()
    bar = BarProgress(Console(file=out, force_terminal=True, width=160))
    plan = plan_backfill(SPAN, [Bin(SPAN.start, 1_500), Bin(SPAN.start + timedelta(days=1), 500)], Rates(1, 1, 1, 0))
    bar.start(plan)
    bar.advance(1_500, SPAN.start + timedelta(days=1))
    bar.advance(2_000, SPAN.end)
    bar.finish(completed=True)
    text = out.getvalue()
    assert "backfill" in text
    assert "2000/2000" in text
    assert "up to 2026-11-03 00:00" in text
    assert "100%" in text
