"""The collect pass over fake ports: windows, splitting, watermark discipline, restarts, run modes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from tests.fixtures.clock import ManualClock
from tests.fixtures.collector import (
    ANCHOR,
    FlakyBus,
    MemoryStore,
    TableSource,
    by_id,
    collected_payloads,
    drain,
    new_row,
)
from tibridge.collector.kql import IndicatorTable
from tibridge.collector.rows import Row, RowReader
from tibridge.collector.settings import CollectingSettings, RunMode
from tibridge.collector.source import SourceError, WindowRows
from tibridge.collector.windows import Window
from tibridge.collector.worker import Collector, WindowTooDense
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import Bus, BusError
from tibridge.common.contracts import InactiveReason, RejectionReason
from tibridge.common.producer import Producer
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION

SPAN: dict[str, Any] = {
    "overlap": timedelta(minutes=15),
    "settle_delay": timedelta(minutes=5),
    "initial_lookback": timedelta(days=2),
    "window": timedelta(hours=6),
}
SETTLE_DELAY = SPAN["settle_delay"]
ROW_CAP = 1000


def spread_rows(count: int, *, hours: float = 40.0) -> list[Row]:
    """`count` indicators with distinct global IPs, evenly over the last `hours` before the settle delay."""
    step = timedelta(hours=hours) / count
    start = ANCHOR - timedelta(minutes=10) - timedelta(hours=hours)
    return [
        new_row(f"indicator--{n:05d}", start + n * step, value=f"8.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}")
        for n in range(count)
    ]


def collector(
    source: Any, store: MemoryStore, bus: Bus, clock: ManualClock, *, row_cap: int = ROW_CAP, **changes: Any
) -> Collector:
    """The worker over fakes; `changes` are TIBRIDGE_COLLECTOR_* settings (`batch_size=40`)."""
    settings = CollectingSettings(**{**SPAN, **changes})
    reader = RowReader(IndicatorTable.NEW, reject_non_global=True)
    return Collector(source, store, Producer(bus, clock), reader, settings, row_cap, clock)


async def emitted_ids(bus: MemoryBus) -> list[str]:
    return [p.indicator_id for p in collected_payloads(await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION))]


async def test_a_pass_emits_every_indicator_once_and_moves_the_watermark_to_the_span_end(
    clock: ManualClock,
) -> None:
    rows = spread_rows(300)
    bus, store = MemoryBus(), MemoryStore()
    worker = collector(TableSource(rows), store, bus, clock)
    await worker.run(asyncio.Event())
    assert await emitted_ids(bus) == [row["Id"] for row in rows]  # oldest first
    assert store.saved == ANCHOR - SETTLE_DELAY
    assert store.history == sorted(store.history)
    counts = worker.counts()
    assert (counts.rows_read, counts.emitted, counts.windows, counts.splits) == (300, 300, 8, 0)


async def test_newest_row_per_id_and_a_rerun_adds_nothing_downstream(clock: ManualClock) -> None:
    rows = spread_rows(50, hours=5)
    republished = [{**row, "TimeGenerated": row["TimeGenerated"] + timedelta(minutes=1)} for row in rows[:10]]
    bus, store = MemoryBus(), MemoryStore()
    source = TableSource([*rows, *republished])
    await collector(source, store, bus, clock).run(asyncio.Event())
    clock.advance(timedelta(minutes=30))
    await collector(source, store, bus, clock).run(asyncio.Event())  # overlaps the first pass
    ids = await emitted_ids(bus)
    assert sorted(ids) == sorted(row["Id"] for row in rows)


async def test_a_row_cap_far_below_the_window_size_still_yields_every_row(clock: ManualClock) -> None:
    rows = spread_rows(400, hours=5)  # all in one 6-hour window
    bus, store = MemoryBus(), MemoryStore()
    source = TableSource(rows, row_cap=7)
    worker = collector(source, store, bus, clock, row_cap=7)
    await worker.run(asyncio.Event())
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)
    assert worker.counts().splits > 50
    assert store.saved == ANCHOR - SETTLE_DELAY


async def test_a_window_that_stays_too_dense_stops_the_pass_without_moving_the_watermark(
    clock: ManualClock,
) -> None:
    moment = ANCHOR - timedelta(hours=1)
    rows = [new_row(f"i{n}", moment, value=f"8.8.8.{n}") for n in range(5)]  # five rows in the same instant
    bus, store = MemoryBus(), MemoryStore()
    worker = collector(TableSource(rows, row_cap=3), store, bus, clock, row_cap=3)
    with pytest.raises(WindowTooDense, match="TIBRIDGE_COLLECTOR_MIN_WINDOW"):
        await worker.run(asyncio.Event())
    assert store.saved is not None
    assert store.saved <= moment
    assert await emitted_ids(bus) == []
    assert worker.counts().failed_passes == 1


async def test_the_watermark_waits_for_every_message_and_a_restart_loses_and_duplicates_nothing(
    clock: ManualClock,
) -> None:
    rows = spread_rows(600)
    bus, store = FlakyBus(fail_after=5), MemoryStore()
    with pytest.raises(BusError):
        await collector(TableSource(rows), store, bus, clock, batch_size=40).run(asyncio.Event())
    published = await emitted_ids(bus)
    assert 0 < len(published) < 600
    assert store.saved is not None
    newest_saved = max(row["TimeGenerated"] for row in rows if row["Id"] in set(published))
    assert store.saved <= newest_saved + timedelta(hours=6)
    # Everything before the watermark is on the bus.
    assert {row["Id"] for row in rows if row["TimeGenerated"] < store.saved} <= set(published)

    bus.heal()
    clock.advance(timedelta(minutes=1))
    await collector(TableSource(rows), store, bus, clock, batch_size=40).run(asyncio.Event())
    again = await emitted_ids(bus)
    assert sorted(published + again) == sorted(row["Id"] for row in rows)


class BlockingSource(TableSource):
    """Hangs on the `block_at`-th read until cancelled."""

    def __init__(self, rows: Sequence[Row], block_at: int) -> None:
        super().__init__(rows)
        self.block_at = block_at
        self.blocked = asyncio.Event()

    async def read(self, window: Window) -> WindowRows:
        if len(self.reads) + 1 == self.block_at:
            self.blocked.set()
            await asyncio.Event().wait()
        return await super().read(window)


async def test_cancelling_a_pass_mid_run_then_running_again_loses_nothing(clock: ManualClock) -> None:
    rows = spread_rows(500)
    bus, store = MemoryBus(), MemoryStore()
    source = BlockingSource(rows, block_at=4)
    task = asyncio.create_task(collector(source, store, bus, clock).run(asyncio.Event()))
    await source.blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first = await emitted_ids(bus)
    assert 0 < len(first) < 500
    await collector(TableSource(rows), store, bus, clock).run(asyncio.Event())
    second = await emitted_ids(bus)
    assert sorted(first + second) == sorted(row["Id"] for row in rows)


async def test_rejections_are_counted_logged_with_the_id_and_never_sent(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    moment = ANCHOR - timedelta(hours=2)
    rows = [
        new_row("good", moment, value="8.8.8.8"),
        new_row("private", moment, value="10.9.8.7"),
        new_row("garbage", moment, key="domain-name:value", value="not a domain"),
        new_row("revoked", moment, value="8.8.4.4", Revoked=True),
    ]
    bus = MemoryBus()
    worker = collector(TableSource(rows), MemoryStore(), bus, clock)
    with caplog.at_level(logging.INFO, logger="tibridge.collector.worker"):
        await worker.run(asyncio.Event())
    emitted = by_id(collected_payloads(await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION)))
    assert set(emitted) == {"good", "revoked"}
    assert emitted["revoked"][0].inactive_reason is InactiveReason.REVOKED
    counts = worker.counts()
    assert counts.rejected == {"invalid_value": 1, "non_global_ip": 1}
    assert counts.inactive == {"revoked": 1}
    logged = {
        (getattr(r, "indicator_id", None), r.rejection_reason) for r in caplog.records if hasattr(r, "rejection_reason")
    }
    assert logged == {("private", RejectionReason.NON_GLOBAL_IP), ("garbage", RejectionReason.INVALID_VALUE)}
    assert not any("10.9.8.7" in r.getMessage() for r in caplog.records)


async def test_batches_are_bounded(clock: ManualClock) -> None:
    bus = FlakyBus(fail_after=10**6)
    await collector(TableSource(spread_rows(10, hours=1)), MemoryStore(), bus, clock, batch_size=3).run(asyncio.Event())
    assert bus.calls == 4


async def test_a_backfill_never_moves_the_watermark_back(clock: ManualClock) -> None:
    store = MemoryStore(saved=ANCHOR - timedelta(hours=1))
    worker = collector(TableSource(spread_rows(30)), store, MemoryBus(), clock, since=timedelta(days=1))
    await worker.run(asyncio.Event())
    assert store.history == [ANCHOR - SETTLE_DELAY]
    assert worker.counts().emitted > 0


async def test_nothing_to_do_before_the_settle_delay_passes(clock: ManualClock) -> None:
    store = MemoryStore(saved=ANCHOR - SETTLE_DELAY)
    source = TableSource([])
    worker = collector(
        source,
        store,
        MemoryBus(),
        clock,
        overlap=timedelta(0),
    )
    await worker.run(asyncio.Event())
    assert source.reads == []
    assert store.history == []


class FailingOnceSource(TableSource):
    async def read(self, window: Window) -> WindowRows:
        if not self.reads:
            self.reads.append(window)
            raise SourceError("Log Analytics kept failing")
        return await super().read(window)


async def test_once_mode_raises_but_loop_mode_logs_and_tries_again_next_interval(
    clock: ManualClock,
) -> None:
    with pytest.raises(SourceError):
        await collector(FailingOnceSource([]), MemoryStore(), MemoryBus(), clock).run(asyncio.Event())

    rows = spread_rows(20, hours=1)
    stop = asyncio.Event()
    clock = StoppingClock(stop, after_sleeps=2)
    bus = MemoryBus()
    worker = collector(FailingOnceSource(rows), MemoryStore(), bus, clock, mode=RunMode.LOOP)
    await asyncio.wait_for(worker.run(stop), timeout=5)
    counts = worker.counts()
    assert (counts.passes, counts.failed_passes) == (2, 1)
    assert await worker.readiness() is None  # the failure cleared with the next good pass
    assert clock.sleeps == [300.0, 300.0]
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)


class StoppingClock(ManualClock):
    """Sets `stop` during its `after_sleeps`-th sleep, as a SIGTERM during the loop's pause would."""

    def __init__(self, stop: asyncio.Event, after_sleeps: int) -> None:
        super().__init__()
        self.stop = stop
        self.after_sleeps = after_sleeps

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if len(self.sleeps) >= self.after_sleeps:
            self.stop.set()


async def test_stop_ends_a_pass_between_windows(clock: ManualClock) -> None:
    stop = asyncio.Event()
    stop.set()
    source = TableSource(spread_rows(10))
    await collector(source, MemoryStore(), MemoryBus(), clock).run(stop)
    assert source.reads == []
