"""The collect pass and the worker that runs it once or on an interval.

A pass reads the span from the saved watermark (minus the overlap) to now (minus the settle delay), planned by
volume rather than by clock. It reads the whole span in one query first: a steady pass, or a backfill of a few
thousand rows, is that one query. Only a span that comes back too big (a partial result, the row cap, or past
the byte budget of a read nobody counted) is counted per bin (`summarize count() by bin(TimeGenerated, …)`) and
cut into windows of at most `rows_per_query` rows; a bin that alone holds more is counted finer, and a counted
window that still comes back too big is halved. Nothing is skipped: a window is published whole or cut again.

Up to `read_ahead` windows are read at once (the query limits themselves are the source's engine's); they are published
in time order, and the watermark moves only over the contiguous prefix of windows whose indicators are
delivered: on the bus for Service Bus; settled end to end (`Deliveries`) for a bus that dies with this process,
which then also bounds how many indicators are in flight. Re-reading a window is harmless: message ids are
deterministic and the topic drops duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from opentelemetry import trace

from tibridge.collector.checkpoint import CheckpointError, CheckpointStore
from tibridge.collector.plan import DAY, BackfillPlan, Rates, budget_refusal, describe, plan_backfill
from tibridge.collector.progress import BackfillProgress, LogProgress
from tibridge.collector.rows import RowReader, RowRejected, time_generated
from tibridge.collector.settings import CollectingSettings, RunMode
from tibridge.collector.source import NO_ROWS, IndicatorSource, SourceError, WindowRows
from tibridge.collector.windows import Window, bin_size_for, pass_span, plan_from_counts
from tibridge.common.aio import completed, first_of
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock
from tibridge.common.contracts import IndicatorCollected
from tibridge.common.metrics import Distribution, Gauge, Snapshot, Tally
from tibridge.common.producer import Producer
from tibridge.common.runtime import WorkerRefused
from tibridge.common.topology import INDICATORS_TOPIC

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tibridge.collector")

# The most a row of ThreatIntelIndicators takes as JSON (Data and Pattern are cut at 1,000 characters each): an
# uncounted read of `rows_per_query` rows may be this long before it is abandoned and the span counted instead.
BYTES_PER_ROW = 4096
THREAT_INTELLIGENCE = "Microsoft Threat Intelligence (formerly MDTI)"
# Log Analytics' own limit per identity (external-apis §1).
LOG_ANALYTICS_QUERIES_PER_30_SECONDS = 200


class WindowTooDense(Exception):
    """Even the smallest window holds more rows than one query may return."""


class BackfillRefused(WorkerRefused):
    """A backfill counted to more rows than its budget, and nobody confirmed it."""


class Undelivered(Exception):
    """Indicators died on a bus that does not outlive the process (dead-lettered by the bus itself)."""


class Delivery(Protocol):
    """What became of messages just published (see `Deliveries`)."""

    @property
    def finished(self) -> bool: ...

    @property
    def remaining(self) -> int: ...

    @property
    def lost(self) -> int: ...

    async def wait(self) -> None: ...


@runtime_checkable
class Deliveries(Protocol):
    """A bus whose messages die with the process (the in-memory bus) follows them to the end of the pipeline:
    finished once nothing downstream still holds them; `lost` counts those the bus itself dead-lettered."""

    def delivery(self, message_ids: Iterable[str]) -> Delivery: ...


class _OnTheBus:
    """Service Bus keeps what it accepted: published is delivered."""

    finished = True
    remaining = 0
    lost = 0

    async def wait(self) -> None:
        return None


class OnTheBus:
    """`Deliveries` for a bus that outlives the process."""

    def delivery(self, message_ids: Iterable[str]) -> Delivery:
        return _OnTheBus()


@dataclass(frozen=True)
class CollectorCounts(Snapshot):
    passes: int
    failed_passes: int
    windows: int  # read and published
    splits: int  # windows counted or halved because they came back too big
    queries: int  # reads and counts sent (each retry of one is not counted again)
    count_queries: int
    rows_read: int
    emitted: int
    rejected: dict[str, int]  # by RejectionReason
    inactive: dict[str, int]  # emitted flagged inactive, by InactiveReason
    watermark: datetime | None
    quiet_since: datetime | None  # the newest row found so far (or where reading began)
    last_error: str | None


class _Metrics:
    def __init__(self) -> None:
        self.passes = Tally("tibridge.collector.passes", "Collect passes, by result")
        self.windows = Tally("tibridge.collector.windows", "Windows read and published")
        self.splits = Tally("tibridge.collector.window_splits", "Windows cut again (partial, capped or counted)")
        self.queries = Tally("tibridge.collector.queries", "Log Analytics queries, by kind (read, count)")
        self.rows = Tally("tibridge.collector.rows", "Rows read from Log Analytics")
        self.emitted = Tally("tibridge.collector.emitted", "Indicators published, by type")
        self.rejected = Tally("tibridge.collector.rejected", "Rows refused, by reason")
        self.inactive = Tally("tibridge.collector.inactive", "Indicators emitted flagged inactive, by reason")
        self.quiet = Tally(
            "tibridge.collector.quiet_passes",
            f"Passes that found no {THREAT_INTELLIGENCE} rows for longer than TIBRIDGE_COLLECTOR_NO_ROWS_WARNING_AFTER",
        )
        self.lag = Distribution(
            "tibridge.collector.watermark_lag", "How far the saved watermark trails the clock", unit="s"
        )
        self.watermark_age = Gauge.named(
            "tibridge.collector.watermark_age", "How far the watermark trails the clock now", unit="s"
        )


class Collector:
    """The collector's worker: `run` does one pass (once) or a pass every interval (loop)."""

    name = "collector"

    def __init__(
        self,
        source: IndicatorSource,
        store: CheckpointStore,
        producer: Producer,
        reader: RowReader,
        settings: CollectingSettings,
        clock: Clock,
        *,
        row_cap: int,
        read_ahead: int,
        deliveries: Deliveries,
        reading: Rates | None = None,
        progress: BackfillProgress | None = None,
    ) -> None:
        """`reading`: what the settings let reading Log Analytics do, for a backfill's plan (default: the limits
        given here and Log Analytics' own); `progress`: where a backfill reports (default: log lines)."""
        self._source = source
        self._store = store
        self._producer = producer
        self._reader = reader
        self._settings = settings
        self._clock = clock
        self._row_cap = row_cap
        self._read_ahead = read_ahead
        self._deliveries = deliveries
        self._reading = reading or Rates(
            rows_per_query=min(settings.rows_per_query, row_cap - 1),
            concurrent_queries=read_ahead,
            queries_per_30_seconds=LOG_ANALYTICS_QUERIES_PER_30_SECONDS,
            seconds_per_query=0.0,
        )
        self._progress = progress or LogProgress(clock, settings.progress_interval.total_seconds())
        self._metrics = _Metrics()
        self._watermark: datetime | None = None
        self._quiet_since: datetime | None = None
        self._last_error: str | None = None
        self._quiet_note: str | None = None
        self._metrics.watermark_age.watch(self._watermark_age)

    def counts(self) -> CollectorCounts:
        metrics = self._metrics
        return CollectorCounts(
            passes=metrics.passes.total(),
            failed_passes=metrics.passes.total(result="failed"),
            windows=metrics.windows.total(),
            splits=metrics.splits.total(),
            queries=metrics.queries.total(),
            count_queries=metrics.queries.total(kind="count"),
            rows_read=metrics.rows.total(),
            emitted=metrics.emitted.total(),
            rejected=metrics.rejected.by("reason"),
            inactive=metrics.inactive.by("reason"),
            watermark=self._watermark,
            quiet_since=self._quiet_since,
            last_error=self._last_error,
        )

    def _watermark_age(self) -> float | None:
        return None if self._watermark is None else (self._clock.now() - self._watermark).total_seconds()

    async def readiness(self) -> str | None:
        return self._last_error or self._quiet_note

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect(stop)
            except (SourceError, CheckpointError, WindowTooDense, BusError, Undelivered, BackfillRefused) as error:
                self._metrics.passes.add(result="failed")
                self._last_error = str(error)
                if self._settings.mode is RunMode.ONCE:
                    raise
                log.error("collect pass failed, next try in %s: %s", self._settings.interval, error)
            else:
                self._metrics.passes.add(result="completed")
            if self._settings.mode is RunMode.ONCE:
                return
            await first_of(self._clock.sleep(self._settings.interval.total_seconds()), stop.wait())

    async def collect(self, stop: asyncio.Event) -> None:
        """One pass; returns early (between windows, or while waiting for deliveries) when `stop` is set."""
        now = self._clock.now()
        watermark = await self._store.load()
        span = pass_span(self._settings, now, watermark)
        self._watermark = watermark
        if span is None:
            return
        self._quiet_since = self._store.quiet_since or span.start
        backfill = await self._plan_backfill(span) if self._settings.since is not None else None
        log.info("collecting %s → %s", span.start.isoformat(), span.end.isoformat())
        await _Pass(self, span, now, backfill).run(stop)
        if not stop.is_set():
            self._last_error = None
            self._check_quiet(span.end)

    async def _plan_backfill(self, span: Window) -> BackfillPlan:
        """The backfill's rows per day, counted before anything is read; refused past the budget unless confirmed."""
        started = self._clock.monotonic()
        self._metrics.queries.add(kind="count")
        days = await self._source.count(span, DAY)
        rates = dataclasses.replace(self._reading, seconds_per_query=self._clock.monotonic() - started)
        plan = plan_backfill(span, days, rates)
        refusal = budget_refusal(plan, self._settings.backfill_max_rows, confirmed=self._settings.backfill_confirmed)
        if refusal is not None:
            raise BackfillRefused(refusal)
        log.info("%s", "; ".join(describe(plan, per_day=False, unpriced=False)))
        return plan

    # -- what a pass calls -------------------------------------------------------------------------------------

    async def _read(self, window: Window, max_bytes: int | None) -> WindowRows:
        self._metrics.queries.add(kind="read")
        return await self._source.read(window, max_bytes=max_bytes)

    async def _count(self, window: Window, limit: int) -> list[_Entry]:
        """The window cut by its rows per bin into windows of at most `limit` rows."""
        if window.span <= self._settings.min_window:
            raise self._too_dense(window)
        size = bin_size_for(window, self._settings.min_window)
        self._metrics.queries.add(kind="count")
        bins = await self._source.count(window, size)
        planned = plan_from_counts(window, bins, size, limit)
        if len(planned) == 1 and not planned[0].dense:
            # The count says the rows fit: the uncounted read gave up at its byte budget (long rows), so read it
            # again counted, without one; a counted read that still comes back too big is halved.
            return [_Entry(window, counted=True, empty=planned[0].rows == 0)]
        self._metrics.splits.add()
        log.info(
            "window %s → %s is cut into %d by its rows", window.start.isoformat(), window.end.isoformat(), len(planned)
        )
        return [_Entry(p.window, counted=True, dense=p.dense, empty=p.rows == 0) for p in planned]

    def _halves(self, window: Window) -> list[_Entry]:
        if window.span / 2 < self._settings.min_window:
            raise self._too_dense(window)
        self._metrics.splits.add()
        log.info("window %s → %s came back too big; halving it", window.start.isoformat(), window.end.isoformat())
        return [_Entry(half) for half in window.halves()]

    def _too_dense(self, window: Window) -> WindowTooDense:
        return WindowTooDense(
            f"the window {window.start.isoformat()} → {window.end.isoformat()} still holds more rows than one query "
            f"returns at the smallest span; lower TIBRIDGE_COLLECTOR_MIN_WINDOW (now {self._settings.min_window})"
        )

    async def _publish_window(self, window: Window, rows: WindowRows, now: datetime) -> list[str]:
        """Every indicator of the window on the bus; returns their message ids."""
        inactive: Counter[str] = Counter()  # by reason
        ids: list[str] = []
        with _tracer.start_as_current_span(
            "collector.window",
            attributes={"window.start": window.start.isoformat(), "window.end": window.end.isoformat()},
        ) as span:
            batch: list[IndicatorCollected] = []
            for row in rows.rows():
                read = self._reader.read(row, now)
                if isinstance(read, RowRejected):
                    self._count_rejection(read)
                    continue
                if read.inactive_reason is not None:
                    inactive[str(read.inactive_reason)] += 1
                batch.append(read)
                if len(batch) >= self._settings.batch_size:
                    ids += await self._send(batch)
                    batch = []
            ids += await self._send(batch)
            span.set_attribute("rows", len(rows))
        # Counted once per window or batch, not per message: the same totals for a fraction of the cost.
        for reason, count in inactive.items():
            self._metrics.inactive.add(count, reason=reason)
        self._metrics.windows.add()
        self._metrics.rows.add(len(rows))
        return ids

    async def _send(self, batch: Sequence[IndicatorCollected]) -> list[str]:
        ids = await self._producer.send(INDICATORS_TOPIC, batch)
        for observable_type, count in Counter(str(item.observable.type) for item in batch).items():
            self._metrics.emitted.add(count, observable_type=observable_type)
        return ids

    async def _save(self, watermark: datetime, quiet_since: datetime) -> None:
        # A pass that ends (fails, stops) while saving waits for the save: the next pass must read what it wrote.
        await completed(self._store.save(watermark, quiet_since=quiet_since))
        self._watermark, self._quiet_since = watermark, quiet_since
        self._metrics.lag.record((self._clock.now() - watermark).total_seconds())

    def _count_rejection(self, rejected: RowRejected) -> None:
        self._metrics.rejected.add(reason=str(rejected.reason))
        log.info(
            "rejected indicator %s: %s",
            rejected.indicator_id,
            rejected.reason,
            extra={"indicator_id": rejected.indicator_id, "rejection_reason": str(rejected.reason)},
        )

    def _check_quiet(self, read_until: datetime) -> None:
        quiet_since = self._quiet_since or read_until
        silent = read_until - quiet_since
        if silent < self._settings.no_rows_warning_after:
            self._quiet_note = None
            return
        self._metrics.quiet.add()
        self._quiet_note = (
            f"no {THREAT_INTELLIGENCE} rows since {quiet_since.isoformat()} ({silent} without any); check "
            "TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS against the SourceSystem values in the workspace (the product was "
            "renamed in 2026 and its connectors' names may have followed)"
        )
        log.warning("%s", self._quiet_note)


@dataclass
class _Entry:
    """A window of the pass's plan, and the work (a read, or a count first) that turns it into rows or a re-cut."""

    window: Window
    counted: bool = False  # a count said it fits the limit: read it without a byte budget
    dense: bool = False  # a count said one bin alone holds more than the limit: count it finer first
    empty: bool = False  # a count found no rows in it: nothing to read
    task: asyncio.Task[WindowRows | list[_Entry]] | None = None


@dataclass
class _Published:
    window: Window
    delivery: Delivery
    newest_row: datetime | None


@dataclass
class _Pass:
    """One pass over `span`: the plan (`entries`, published up to `head`), the reads in flight, and the keeper
    that moves the watermark over the delivered prefix of what was published (`unsettled`), as deliveries finish
    and while the pass reads and publishes on."""

    collector: Collector
    span: Window
    now: datetime
    backfill: BackfillPlan | None = None  # a backfill's counted rows, whose progress the pass reports
    entries: list[_Entry] = field(init=False)
    head: int = 0
    unsettled: deque[_Published] = field(default_factory=deque)
    limit: int = field(init=False)
    published_all: bool = False
    _published: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.entries = [_Entry(self.span)]
        self.limit = min(self.collector._settings.rows_per_query, self.collector._row_cap - 1)

    async def run(self, stop: asyncio.Event) -> None:
        progress = self.collector._progress
        if self.backfill is not None:
            progress.start(self.backfill)
        completed = False
        try:
            await self._run(stop)
            completed = not stop.is_set()
        finally:
            if self.backfill is not None:
                progress.finish(completed=completed)

    async def _run(self, stop: asyncio.Event) -> None:
        keeper = asyncio.create_task(self._keep_watermark())
        try:
            while self.head < len(self.entries) and not stop.is_set():
                self._start_reads()
                head = self.entries[self.head]
                assert head.task is not None
                if not head.task.done():
                    running = {e.task for e in self._ahead() if e.task is not None and not e.task.done()}
                    await first_of(asyncio.wait({*running, keeper}, return_when=asyncio.FIRST_COMPLETED), stop.wait())
                    _raise_if_failed(keeper)
                    self._recut_finished()
                    continue
                outcome = head.task.result()
                if isinstance(outcome, list):
                    self.entries[self.head : self.head + 1] = outcome
                    continue
                await self._publish(head.window, outcome, keeper, stop)
            self.published_all = True
            self._published.set()
            await first_of(asyncio.shield(keeper), stop.wait())
            _raise_if_failed(keeper)
        finally:
            tasks = [entry.task for entry in self.entries if entry.task is not None] + [keeper]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # also takes the errors nobody looked at

    def _ahead(self) -> list[_Entry]:
        return self.entries[self.head : self.head + self.collector._read_ahead]

    def _start_reads(self) -> None:
        for entry in self._ahead():
            if entry.task is None:
                entry.task = asyncio.create_task(self._work(entry))

    def _recut_finished(self) -> None:
        """Windows ahead of the head that came back too big are re-cut at once, so their parts are read meanwhile
        (a failed read raises here and ends the pass)."""
        for index in reversed(range(self.head + 1, min(self.head + self.collector._read_ahead, len(self.entries)))):
            task = self.entries[index].task
            if task is not None and task.done():
                outcome = task.result()
                if isinstance(outcome, list):
                    self.entries[index : index + 1] = outcome

    async def _work(self, entry: _Entry) -> WindowRows | list[_Entry]:
        collector = self.collector
        if entry.empty:
            return NO_ROWS
        if entry.dense:
            return await collector._count(entry.window, self.limit)
        budget = None if entry.counted else self.limit * BYTES_PER_ROW
        rows = await collector._read(entry.window, budget)
        if rows.complete and len(rows) < collector._row_cap:
            return rows
        if not rows.complete and len(rows):
            # The service stopped at what it returns at most: plan below that from now on.
            self.limit = max(1, min(self.limit, len(rows) * 9 // 10))
        if entry.counted:
            return collector._halves(entry.window)
        return await collector._count(entry.window, self.limit)

    async def _publish(self, window: Window, rows: WindowRows, keeper: asyncio.Task[None], stop: asyncio.Event) -> None:
        collector = self.collector
        await self._room_for(len(rows), keeper, stop)
        if stop.is_set():
            return
        ids = await collector._publish_window(window, rows, self.now)
        self.unsettled.append(_Published(window, collector._deliveries.delivery(ids), _newest_row(window, rows)))
        self._published.set()
        self.entries[self.head].task = None  # its rows are published: a pass over millions keeps none of them
        self.head += 1
        if self.backfill is not None:
            collector._progress.advance(self.backfill.rows_before(window.end), window.end)

    async def _room_for(self, rows: int, keeper: asyncio.Task[None], stop: asyncio.Event) -> None:
        """On a bus that dies with the process: no more than `max_unsettled` indicators in flight (a window
        always goes when nothing else is in flight, however big it is)."""
        cap = self.collector._settings.max_unsettled
        while not stop.is_set():
            in_flight = sum(p.delivery.remaining for p in self.unsettled)
            if in_flight == 0 or in_flight + rows <= cap:
                return
            oldest = next(p for p in self.unsettled if not p.delivery.finished)
            await first_of(oldest.delivery.wait(), asyncio.shield(keeper), stop.wait())
            _raise_if_failed(keeper)

    async def _keep_watermark(self) -> None:
        """Moves the watermark each time the oldest published window is delivered; returns once all are."""
        while True:
            while not self.unsettled:
                if self.published_all:
                    return
                self._published.clear()
                await self._published.wait()
            await self.unsettled[0].delivery.wait()
            await self._advance()

    async def _advance(self) -> None:
        """The watermark over the delivered prefix of published windows (a backfill never moves it back)."""
        collector = self.collector
        moved_to: datetime | None = None
        quiet_since = collector._quiet_since or self.span.start
        lost: _Published | None = None
        while self.unsettled and self.unsettled[0].delivery.finished:
            published = self.unsettled.popleft()
            if published.delivery.lost:
                lost = published
                break
            moved_to = published.window.end
            if published.newest_row is not None:
                quiet_since = max(quiet_since, published.newest_row)
        watermark = collector._watermark
        if moved_to is not None and (watermark is None or moved_to > watermark):
            await collector._save(moved_to, quiet_since)
        if lost is not None:
            raise Undelivered(
                f"{lost.delivery.lost} indicators of {lost.window.start.isoformat()} → {lost.window.end.isoformat()} "
                "were dead-lettered by the in-memory bus (delivered too often or expired) and die with this process; "
                "the watermark stays before them, so the next pass reads them again"
            )


def _raise_if_failed(task: asyncio.Task[None]) -> None:
    if task.done() and not task.cancelled() and task.exception() is not None:
        task.result()


def _newest_row(window: Window, rows: WindowRows) -> datetime | None:
    """When the window's newest row was generated (rows come oldest first); None when it has none."""
    if not len(rows):
        return None
    return time_generated(dict(zip(rows.columns, rows.values[-1], strict=False))) or window.start
