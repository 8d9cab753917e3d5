"""The collect pass over fake ports: planning by volume, concurrent reads published in order, the watermark over
the delivered prefix only, restarts, run modes, and the warning when no rows come."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
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
from tibridge.collector.worker import Collector, Deliveries, Delivery, OnTheBus, Undelivered, WindowTooDense
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import Bus, BusError
from tibridge.common.contracts import InactiveReason, RejectionReason
from tibridge.common.producer import Producer
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION

SPAN: dict[str, Any] = {
    "overlap": timedelta(minutes=15),
    "settle_delay": timedelta(minutes=5),
    "initial_lookback": timedelta(days=2),
}
SETTLE_DELAY = SPAN["settle_delay"]
ROW_CAP = 1000
READ_AHEAD = 5


def spread_rows(count: int, *, hours: float = 40.0) -> list[Row]:
    """`count` indicators with distinct global IPs, evenly over the last `hours` before the settle delay."""
    step = timedelta(hours=hours) / count
    start = ANCHOR - timedelta(minutes=10) - timedelta(hours=hours)
    return [
        new_row(f"indicator--{n:05d}", start + n * step, value=f"8.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}")
        for n in range(count)
    ]


def collector(
    source: Any,
    store: MemoryStore,
    bus: Bus,
    clock: ManualClock,
    *,
    row_cap: int = ROW_CAP,
    deliveries: Deliveries | None = None,
    **changes: Any,
) -> Collector:
    """The worker over fakes; `changes` are TIBRIDGE_COLLECTOR_* settings (`batch_size=40`)."""
    settings = CollectingSettings(**{**SPAN, **changes})
    reader = RowReader(IndicatorTable.NEW, reject_non_global=True)
    return Collector(
        source,
        store,
        Producer(bus, clock),
        reader,
        settings,
        clock,
        row_cap=row_cap,
        read_ahead=READ_AHEAD,
        deliveries=deliveries or OnTheBus(),
    )


async def until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until `condition` holds."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def emitted_ids(bus: MemoryBus) -> list[str]:
    return [p.indicator_id for p in collected_payloads(await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION))]


# --- planning by volume -------------------------------------------------------------------------------------


async def test_a_pass_is_one_query_when_its_span_comes_back_whole(clock: ManualClock) -> None:
    rows = spread_rows(300)
    bus, store, source = MemoryBus(), MemoryStore(), TableSource(rows)
    worker = collector(source, store, bus, clock)
    await worker.run(asyncio.Event())
    assert await emitted_ids(bus) == [row["Id"] for row in rows]  # oldest first
    assert source.reads == [Window(ANCHOR - timedelta(days=2), ANCHOR - SETTLE_DELAY)]
    assert source.counts == []
    assert store.history == [ANCHOR - SETTLE_DELAY]
    counts = worker.counts()
    assert (counts.queries, counts.count_queries, counts.windows, counts.splits) == (1, 0, 1, 0)
    assert (counts.rows_read, counts.emitted) == (300, 300)


async def test_a_steady_pass_after_the_first_is_one_query(clock: ManualClock) -> None:
    rows = spread_rows(200)
    store, source = MemoryStore(), TableSource(rows)
    await collector(source, store, MemoryBus(), clock).run(asyncio.Event())
    clock.advance(timedelta(minutes=5))
    source.reads.clear()
    worker = collector(source, store, MemoryBus(), clock)
    await worker.run(asyncio.Event())
    watermark = ANCHOR - SETTLE_DELAY
    assert source.reads == [Window(watermark - SPAN["overlap"], watermark + timedelta(minutes=5))]
    assert worker.counts().queries == 1


async def test_a_span_too_big_for_one_read_is_counted_and_cut_by_rows(clock: ManualClock) -> None:
    rows = spread_rows(600)
    bus, store, source = MemoryBus(), MemoryStore(), TableSource(rows)
    worker = collector(source, store, bus, clock, rows_per_query=50)  # a byte budget far below 600 rows
    await worker.run(asyncio.Event())
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)
    assert len(source.counts) == 1
    # The over-budget read, the count, then windows of at most 50 rows by the count: 12 of them.
    windows = source.reads[1:]
    assert len(windows) == 12
    assert windows[0].start == source.reads[0].start
    assert windows[-1].end == source.reads[0].end
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert all(len(source._in(window)) <= 50 for window in windows)
    counts = worker.counts()
    assert (counts.queries, counts.count_queries, counts.splits) == (14, 1, 1)
    assert store.history == sorted(store.history)
    assert store.saved == ANCHOR - SETTLE_DELAY


async def test_a_row_cap_far_below_the_window_size_still_yields_every_row(clock: ManualClock) -> None:
    rows = spread_rows(400, hours=5)
    bus, store = MemoryBus(), MemoryStore()
    source = TableSource(rows, row_cap=7)
    worker = collector(source, store, bus, clock, row_cap=7)
    await worker.run(asyncio.Event())
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)
    assert all(len(source._in(window)) < 7 for window in source.reads[1:])
    assert worker.counts().splits >= 1
    assert store.saved == ANCHOR - SETTLE_DELAY


async def test_a_partial_result_teaches_the_plan_what_the_service_returns_at_most(clock: ManualClock) -> None:
    rows = spread_rows(400, hours=5)
    bus, source = MemoryBus(), TableSource(rows, row_cap=40)  # the service truncates at 40 rows
    worker = collector(source, MemoryStore(), bus, clock)  # while we think it returns up to 1,000
    await worker.run(asyncio.Event())
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)
    assert all(len(source._in(window)) <= 36 for window in source.reads[1:])  # 90 % of what came back


async def test_a_bin_denser_than_the_limit_is_counted_finer(clock: ManualClock) -> None:
    burst = ANCHOR - timedelta(hours=3)
    rows: list[Row] = [
        new_row(f"b{n}", burst + n * timedelta(seconds=1), value=f"8.8.{n // 256}.{n % 256}") for n in range(90)
    ]
    rows += spread_rows(30)
    bus, source = MemoryBus(), TableSource(rows)
    worker = collector(source, MemoryStore(), bus, clock, rows_per_query=5)
    await worker.run(asyncio.Event())
    assert sorted(await emitted_ids(bus)) == sorted(row["Id"] for row in rows)
    # 2 days in 173-second bins puts the 90-second burst in at most two bins; each is counted again finer.
    assert len(source.counts) >= 2
    assert source.counts[1][1] < source.counts[0][1]
    assert all(len(source._in(window)) <= 5 for window in source.reads[1:])


async def test_a_window_that_stays_too_dense_stops_the_pass_without_moving_the_watermark(
    clock: ManualClock,
) -> None:
    moment = ANCHOR - timedelta(hours=1)
    rows = [new_row(f"i{n}", moment, value=f"8.8.8.{n}") for n in range(5)]  # five rows in the same instant
    bus, store = MemoryBus(), MemoryStore()
    worker = collector(TableSource(rows, row_cap=3), store, bus, clock, row_cap=3)
    with pytest.raises(WindowTooDense, match="TIBRIDGE_COLLECTOR_MIN_WINDOW"):
        await worker.run(asyncio.Event())
    assert store.saved is None or store.saved <= moment
    assert await emitted_ids(bus) == []
    assert worker.counts().failed_passes == 1


# --- concurrency, order, the watermark ---------------------------------------------------------------------


class GatedSource(TableSource):
    """Holds the `gate_at`-th read (counting from 0) until `gate` is set; tracks the reads in flight."""

    def __init__(self, rows: Sequence[Row], gate_at: int | None = None) -> None:
        super().__init__(rows)
        self.gate_at = gate_at
        self.gate = asyncio.Event()
        self.started: list[Window] = []
        self.in_flight = 0
        self.peak = 0

    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        index = len(self.started)
        self.started.append(window)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if index == self.gate_at:
                await self.gate.wait()
            for _ in range(3):  # let the other reads interleave
                await asyncio.sleep(0)
            return await super().read(window, max_bytes=max_bytes)
        finally:
            self.in_flight -= 1


async def test_windows_are_read_concurrently_within_the_limit_and_published_oldest_first(clock: ManualClock) -> None:
    rows = spread_rows(600)
    bus, source = MemoryBus(), GatedSource(rows)
    await collector(source, MemoryStore(), bus, clock, rows_per_query=25).run(asyncio.Event())
    assert source.peak == READ_AHEAD
    assert await emitted_ids(bus) == [row["Id"] for row in rows]  # time order, whatever order reads finished in


class RememberingSource(TableSource):
    """Keeps a weak reference to every answer it gave, and counts, at each read, the answers still alive."""

    def __init__(self, rows: Sequence[Row]) -> None:
        super().__init__(rows)
        self.answers: list[weakref.ref[WindowRows]] = []
        self.alive_at_read: list[int] = []

    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        gc.collect()
        self.alive_at_read.append(sum(answer() is not None for answer in self.answers))
        rows = await super().read(window, max_bytes=max_bytes)
        self.answers.append(weakref.ref(rows))
        return rows


async def test_a_pass_lets_go_of_the_rows_of_every_window_it_published(clock: ManualClock) -> None:
    source = RememberingSource(spread_rows(1200))
    await collector(source, MemoryStore(), MemoryBus(), clock, rows_per_query=25).run(asyncio.Event())
    assert len(source.alive_at_read) > 8 * READ_AHEAD
    # A few windows' worth around those read ahead, however long the pass (before: every window of the pass).
    assert max(source.alive_at_read) <= 2 * READ_AHEAD


async def test_the_watermark_never_passes_a_window_still_being_read(clock: ManualClock) -> None:
    rows = spread_rows(600)
    bus, store = MemoryBus(), MemoryStore()
    source = GatedSource(rows, gate_at=2)  # the second planned window (after the optimistic read and the count)
    task = asyncio.create_task(collector(source, store, bus, clock, rows_per_query=25).run(asyncio.Event()))
    for _ in range(200):
        await asyncio.sleep(0)
    first_window = source.started[1]
    # Later windows were read meanwhile, but only the first is published, and the watermark is at its end.
    assert source.peak == READ_AHEAD
    assert store.history == [first_window.end]
    assert await emitted_ids(bus) == [row["Id"] for row in rows if row["TimeGenerated"] < first_window.end]
    source.gate.set()
    await task
    assert store.saved == ANCHOR - SETTLE_DELAY
    assert len(await emitted_ids(bus)) == 600 - len(source._in(first_window))


class HeldDeliveries:
    """`Deliveries` whose deliveries finish when the test says so (a bus that dies with the process)."""

    def __init__(self) -> None:
        self.held: list[HeldDelivery] = []

    def delivery(self, message_ids: Iterable[str]) -> Delivery:
        delivery = HeldDelivery(len(list(message_ids)))
        self.held.append(delivery)
        return delivery


class HeldDelivery:
    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.lost = 0
        self._done = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def finish(self, lost: int = 0) -> None:
        self.remaining, self.lost = 0, lost
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()


async def test_on_a_bus_that_dies_with_the_process_the_watermark_waits_for_delivery(clock: ManualClock) -> None:
    rows = spread_rows(300)
    store, deliveries = MemoryStore(), HeldDeliveries()
    source = TableSource(rows)
    task = asyncio.create_task(
        collector(source, store, MemoryBus(), clock, rows_per_query=25, deliveries=deliveries).run(asyncio.Event())
    )
    await until(lambda: len(deliveries.held) >= 3)
    assert store.history == []  # published is not delivered
    deliveries.held[1].finish()
    await asyncio.sleep(0)
    assert store.history == []  # the second window is delivered, the first is not: no contiguous prefix yet
    deliveries.held[0].finish()
    for _ in range(10):
        await asyncio.sleep(0)
    assert store.history == [source.reads[2].end]  # over the first two at once
    while not task.done():
        for held in deliveries.held:
            if not held.finished:
                held.finish()
        await asyncio.sleep(0)
    await task
    assert store.saved == ANCHOR - SETTLE_DELAY


async def test_indicators_the_bus_lost_keep_the_watermark_before_them(clock: ManualClock) -> None:
    store, deliveries = MemoryStore(), HeldDeliveries()
    source = TableSource(spread_rows(300))
    task = asyncio.create_task(
        collector(source, store, MemoryBus(), clock, rows_per_query=25, deliveries=deliveries).run(asyncio.Event())
    )
    await until(lambda: len(deliveries.held) >= 3)
    deliveries.held[0].finish()
    deliveries.held[1].finish(lost=2)
    deliveries.held[2].finish()
    with pytest.raises(Undelivered, match=r"2 indicators .* dead-lettered by the in-memory bus"):
        await task
    assert store.history == [source.reads[1].end]  # the first window only


async def test_on_a_bus_that_dies_with_the_process_only_so_many_indicators_are_in_flight(clock: ManualClock) -> None:
    deliveries = HeldDeliveries()
    task = asyncio.create_task(
        collector(
            TableSource(spread_rows(300)),
            MemoryStore(),
            MemoryBus(),
            clock,
            rows_per_query=25,
            max_unsettled=60,
            deliveries=deliveries,
        ).run(asyncio.Event())
    )
    for _ in range(100):
        await asyncio.sleep(0)
    assert sum(held.remaining for held in deliveries.held) <= 60
    assert len(deliveries.held) == 2
    while not task.done():
        for held in deliveries.held:
            held.finish()
        await asyncio.sleep(0)
    await task


async def test_the_watermark_waits_for_every_message_and_a_restart_loses_and_duplicates_nothing(
    clock: ManualClock,
) -> None:
    rows = spread_rows(600)
    bus, store = FlakyBus(fail_after=5), MemoryStore()
    with pytest.raises(BusError):
        await collector(TableSource(rows), store, bus, clock, batch_size=40, rows_per_query=20).run(asyncio.Event())
    published = await emitted_ids(bus)
    assert 0 < len(published) < 600
    assert store.saved is not None
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

    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        if len(self.reads) + 1 == self.block_at:
            self.blocked.set()
            await asyncio.Event().wait()
        return await super().read(window, max_bytes=max_bytes)


async def test_cancelling_a_pass_mid_run_then_running_again_loses_nothing(clock: ManualClock) -> None:
    rows = spread_rows(500)
    bus, store = MemoryBus(), MemoryStore()
    source = BlockingSource(rows, block_at=4)
    task = asyncio.create_task(collector(source, store, bus, clock, rows_per_query=50).run(asyncio.Event()))
    await source.blocked.wait()
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    first = await emitted_ids(bus)
    assert 0 < len(first) < 500
    await collector(TableSource(rows), store, bus, clock).run(asyncio.Event())
    second = await emitted_ids(bus)
    assert sorted(first + second) == sorted(row["Id"] for row in rows)


# --- rows, batches, modes ------------------------------------------------------------------------------------


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
    worker = collector(source, store, MemoryBus(), clock, overlap=timedelta(0))
    await worker.run(asyncio.Event())
    assert source.reads == []
    assert store.history == []


class FailingOnceSource(TableSource):
    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        if not self.reads:
            self.reads.append(window)
            raise SourceError("Log Analytics kept failing")
        return await super().read(window, max_bytes=max_bytes)


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


# --- no rows for too long --------------------------------------------------------------------------------------


async def test_passes_without_rows_for_the_configured_span_warn_and_say_so_in_readiness(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    quiet: dict[str, Any] = {"no_rows_warning_after": timedelta(hours=12)}
    with caplog.at_level(logging.WARNING, logger="tibridge.collector.worker"):
        first = collector(TableSource([]), store, MemoryBus(), clock, **quiet)
        await first.run(asyncio.Event())  # two days read, no row: too long at once
    note = await first.readiness()
    assert note is not None
    assert "no Microsoft Threat Intelligence (formerly MDTI) rows since" in note
    assert "TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS" in note
    assert any(note in record.getMessage() for record in caplog.records)
    assert first.counts().quiet_since == ANCHOR - timedelta(days=2)
    assert store.saved_quiet_since == ANCHOR - timedelta(days=2)  # kept for the next process (a CronJob)

    # A row arrives: the next pass (a new process) is quiet no more.
    clock.advance(timedelta(minutes=10))
    moment = ANCHOR
    later = collector(TableSource([new_row("fresh", moment)]), store, MemoryBus(), clock, **quiet)
    await later.run(asyncio.Event())
    assert await later.readiness() is None
    assert store.saved_quiet_since == moment


async def test_a_quiet_spell_shorter_than_the_span_says_nothing(clock: ManualClock) -> None:
    store = MemoryStore(saved=ANCHOR - timedelta(hours=2), saved_quiet_since=ANCHOR - timedelta(hours=3))
    worker = collector(TableSource([]), store, MemoryBus(), clock)
    await worker.run(asyncio.Event())
    assert await worker.readiness() is None
    clock.advance(timedelta(days=1))
    await worker.run(asyncio.Event())  # the same process a day later: a day and 3 hours without a row
    note = await worker.readiness()
    assert note is not None
    assert note.startswith("no Microsoft Threat Intelligence (formerly MDTI) rows since 2026-11-14T21:00:00")
