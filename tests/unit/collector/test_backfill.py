"""A backfill pass over fake ports: counted per day before any read, refused past its budget unless confirmed, and
its progress reported window by window (as log lines when no terminal shows a bar)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.clock import ManualClock
from tests.fixtures.collector import ANCHOR, MemoryStore, TableSource, new_row
from tibridge.collector.kql import IndicatorTable
from tibridge.collector.plan import DAY, BackfillPlan, Rates, plan_backfill
from tibridge.collector.progress import LogProgress
from tibridge.collector.rows import RowReader
from tibridge.collector.settings import CollectingSettings
from tibridge.collector.windows import Bin, Window
from tibridge.collector.worker import BackfillRefused, Collector, OnTheBus
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.producer import Producer

# 480 indicators over the last 4 days, 10 rows per 2 hours.
ROWS = [
    new_row(
        f"indicator--{n:04d}",
        ANCHOR - timedelta(minutes=10) - n * timedelta(minutes=12),
        value=f"8.8.{n // 256}.{n % 256}",
    )
    for n in range(480)
]


class RecordedProgress:
    def __init__(self) -> None:
        self.plan: BackfillPlan | None = None
        self.advances: list[tuple[int, datetime]] = []
        self.completed: bool | None = None

    def start(self, plan: BackfillPlan) -> None:
        self.plan = plan

    def advance(self, rows_done: int, published_until: datetime) -> None:
        self.advances.append((rows_done, published_until))

    def finish(self, *, completed: bool) -> None:
        self.completed = completed


def backfill_worker(source: TableSource, clock: ManualClock, progress: Any = None, **changes: Any) -> Collector:
    settings = CollectingSettings(
        since=timedelta(days=5), settle_delay=timedelta(minutes=5), rows_per_query=10, **changes
    )
    return Collector(
        source,
        MemoryStore(),
        Producer(MemoryBus(), clock),
        RowReader(IndicatorTable.NEW, reject_non_global=True),
        settings,
        clock,
        row_cap=10_000,
        read_ahead=5,
        deliveries=OnTheBus(),
        progress=progress,
    )


async def test_a_backfill_counts_its_rows_per_day_before_reading_and_reports_each_window(clock: ManualClock) -> None:
    source, progress = TableSource(ROWS), RecordedProgress()
    worker = backfill_worker(source, clock, progress)
    await worker.run(asyncio.Event())
    span = Window(ANCHOR - timedelta(days=5), ANCHOR - timedelta(minutes=5))
    assert source.counts[0] == (span, DAY)
    assert progress.plan is not None
    assert progress.plan.rows == 480
    # ANCHOR is midnight: four whole days of 120 rows.
    assert [bin_.rows for bin_ in progress.plan.days] == [120, 120, 120, 120]
    # Then the usual pass: the whole span read at once (over its byte budget), counted finer, read in windows.
    assert len(source.reads) > 2
    rows_done = [done for done, _ in progress.advances]
    assert rows_done == sorted(rows_done)
    assert rows_done[-1] == 480
    assert [until for _, until in progress.advances][-1] == span.end
    assert progress.completed is True
    assert worker.counts().count_queries == 2


async def test_a_backfill_past_its_budget_is_refused_before_anything_is_read(clock: ManualClock) -> None:
    source = TableSource(ROWS)
    worker = backfill_worker(source, clock, backfill_max_rows=479)
    with pytest.raises(
        BackfillRefused, match=r"holds 480 rows, more than TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS \(479\)"
    ):
        await worker.run(asyncio.Event())
    assert source.reads == []
    assert "TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS" in (await worker.readiness() or "")


async def test_a_confirmed_backfill_past_its_budget_runs(clock: ManualClock) -> None:
    source = TableSource(ROWS)
    worker = backfill_worker(source, clock, backfill_max_rows=479, backfill_confirmed=True)
    await worker.run(asyncio.Event())
    assert worker.counts().emitted == 480


async def test_a_pass_that_is_not_a_backfill_counts_nothing_first(clock: ManualClock) -> None:
    source = TableSource(ROWS[:50])
    settings = CollectingSettings(initial_lookback=timedelta(days=5), backfill_max_rows=1)
    worker = Collector(
        source,
        MemoryStore(),
        Producer(MemoryBus(), clock),
        RowReader(IndicatorTable.NEW, reject_non_global=True),
        settings,
        clock,
        row_cap=10_000,
        read_ahead=5,
        deliveries=OnTheBus(),
    )
    await worker.run(asyncio.Event())
    assert source.counts == []
    assert worker.counts().emitted == 50


def test_progress_lines_say_the_share_the_rows_and_an_eta_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    span = Window(ANCHOR - timedelta(days=4), ANCHOR)
    plan = plan_backfill(span, [Bin(span.start + n * DAY, 1_000) for n in range(4)], Rates(1000, 5, 200, 1.0))
    progress = LogProgress(clock, every_seconds=30)
    with caplog.at_level(logging.INFO, logger="tibridge.collector.progress"):
        progress.start(plan)
        clock.advance(10)
        progress.advance(plan.rows_before(span.start + DAY), span.start + DAY)  # too soon for a line
        clock.advance(20)
        progress.advance(plan.rows_before(span.start + 2 * DAY), span.start + 2 * DAY)
        clock.advance(30)
        progress.advance(plan.rows_before(span.start + 3 * DAY), span.start + 3 * DAY)
        progress.finish(completed=True)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("backfill of 4,000 rows from 2026-11-11T00:00:00+00:00")
    assert messages[1:] == [
        "backfill 50%: 2,000 of 4,000 rows, published up to 2026-11-13T00:00:00+00:00, ETA 0:00:30",
        "backfill 75%: 3,000 of 4,000 rows, published up to 2026-11-14T00:00:00+00:00, ETA 0:00:20",
        "backfill done: 4,000 rows in 0:01:00",
    ]
    assert caplog.records[2].__dict__["backfill_rows_done"] == 3_000


def test_a_stopped_backfill_says_how_far_it_came(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    span = Window(ANCHOR - DAY, ANCHOR)
    progress = LogProgress(clock, every_seconds=0)
    with caplog.at_level(logging.INFO, logger="tibridge.collector.progress"):
        progress.start(plan_backfill(span, [Bin(span.start, 100)], Rates(1000, 5, 200, 1.0)))
        progress.advance(40, span.start + DAY * 0.4)
        clock.advance(5)
        progress.finish(completed=False)
    assert caplog.records[-1].getMessage() == "backfill stopped after 0:00:05 at 40 of 100 rows"
    assert caplog.records[-1].levelno == logging.WARNING
