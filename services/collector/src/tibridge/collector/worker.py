"""The collect pass and the worker that runs it once or on an interval.

A pass reads the span from the saved watermark (minus the overlap) to now (minus the settle delay), window by
window, oldest first. A window that comes back partial or at the row cap is halved and read again; every
indicator of a window is on the bus before the watermark moves to the window's end. Re-reading a window is
harmless: message ids are deterministic and the topic drops duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from opentelemetry import trace

from tibridge.collector.checkpoint import CheckpointError, CheckpointStore
from tibridge.collector.rows import Row, RowReader, RowRejected
from tibridge.collector.settings import CollectingSettings, RunMode
from tibridge.collector.source import IndicatorSource, SourceError
from tibridge.collector.windows import Window, pass_span, split
from tibridge.common.aio import first_of
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock
from tibridge.common.contracts import IndicatorCollected
from tibridge.common.metrics import Distribution, Snapshot, Tally
from tibridge.common.producer import Producer
from tibridge.common.topology import INDICATORS_TOPIC

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tibridge.collector")


class WindowTooDense(Exception):
    """Even the smallest window holds more rows than one query may return."""


@dataclass(frozen=True)
class CollectorCounts(Snapshot):
    passes: int
    failed_passes: int
    windows: int
    splits: int
    rows_read: int
    emitted: int
    rejected: dict[str, int]  # by RejectionReason
    inactive: dict[str, int]  # emitted flagged inactive, by InactiveReason
    watermark: datetime | None
    last_error: str | None


class _Metrics:
    def __init__(self) -> None:
        self.passes = Tally("tibridge.collector.passes", "Collect passes, by result")
        self.windows = Tally("tibridge.collector.windows", "Windows read and published")
        self.splits = Tally("tibridge.collector.window_splits", "Windows halved (partial or capped)")
        self.rows = Tally("tibridge.collector.rows", "Rows read from Log Analytics")
        self.emitted = Tally("tibridge.collector.emitted", "Indicators published, by type")
        self.rejected = Tally("tibridge.collector.rejected", "Rows refused, by reason")
        self.inactive = Tally("tibridge.collector.inactive", "Indicators emitted flagged inactive, by reason")
        self.lag = Distribution(
            "tibridge.collector.watermark_lag", "How far the saved watermark trails the clock", unit="s"
        )


class Collector:
    """The collector's worker: `run` does one pass (once) or a pass every interval (loop).

    A window that comes back partial or with `row_cap` rows may be truncated, so it is halved, down to
    `min_window`; a window still too big there is an error, never a truncation.
    """

    name = "collector"

    def __init__(
        self,
        source: IndicatorSource,
        store: CheckpointStore,
        producer: Producer,
        reader: RowReader,
        settings: CollectingSettings,
        row_cap: int,
        clock: Clock,
    ) -> None:
        self._source = source
        self._store = store
        self._producer = producer
        self._reader = reader
        self._settings = settings
        self._row_cap = row_cap
        self._clock = clock
        self._metrics = _Metrics()
        self._watermark: datetime | None = None
        self._last_error: str | None = None

    def counts(self) -> CollectorCounts:
        metrics = self._metrics
        return CollectorCounts(
            passes=metrics.passes.total(),
            failed_passes=metrics.passes.total(result="failed"),
            windows=metrics.windows.total(),
            splits=metrics.splits.total(),
            rows_read=metrics.rows.total(),
            emitted=metrics.emitted.total(),
            rejected=metrics.rejected.by("reason"),
            inactive=metrics.inactive.by("reason"),
            watermark=self._watermark,
            last_error=self._last_error,
        )

    async def readiness(self) -> str | None:
        return self._last_error

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect(stop)
            except (SourceError, CheckpointError, WindowTooDense, BusError) as error:
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
        """One pass; returns early (between windows) when `stop` is set."""
        now = self._clock.now()
        watermark = await self._store.load()
        span = pass_span(self._settings, now, watermark)
        self._watermark = watermark
        if span is not None:
            log.info("collecting %s → %s", span.start.isoformat(), span.end.isoformat())
        # A stack, oldest window on top: halves are pushed back in order, so windows finish oldest first.
        pending = list(reversed(list(split(span, self._settings.window)))) if span else []
        while pending and not stop.is_set():
            window = pending.pop()
            result = await self._source.read(window)
            if not result.complete or len(result.rows) >= self._row_cap:
                first, second = self._halve(window, len(result.rows), result.complete)
                pending += [second, first]
                continue
            await self._publish_window(window, result.rows, now)
            if watermark is None or window.end > watermark:  # a backfill never moves the watermark back
                await self._store.save(window.end)
                watermark = window.end
                self._watermark = watermark
                self._metrics.lag.record((self._clock.now() - watermark).total_seconds())
        if not stop.is_set():
            self._last_error = None

    def _halve(self, window: Window, rows: int, complete: bool) -> tuple[Window, Window]:
        if window.span / 2 < self._settings.min_window:
            why = "a partial result" if not complete else f"{rows} rows (the row cap)"
            raise WindowTooDense(
                f"the window {window.start.isoformat()} → {window.end.isoformat()} still returns {why} at the "
                f"smallest span; lower TIBRIDGE_COLLECTOR_MIN_WINDOW (now {self._settings.min_window})"
            )
        self._metrics.splits.add()
        log.info("window %s → %s returned %s; halving it", window.start.isoformat(), window.end.isoformat(), rows)
        return window.halves()

    async def _publish_window(self, window: Window, rows: Sequence[Row], now: datetime) -> None:
        inactive: Counter[str] = Counter()  # by reason
        with _tracer.start_as_current_span(
            "collector.window",
            attributes={"window.start": window.start.isoformat(), "window.end": window.end.isoformat()},
        ) as span:
            batch: list[IndicatorCollected] = []
            for row in rows:
                read = self._reader.read(row, now)
                if isinstance(read, RowRejected):
                    self._count_rejection(read)
                    continue
                if read.inactive_reason is not None:
                    inactive[str(read.inactive_reason)] += 1
                batch.append(read)
                if len(batch) >= self._settings.batch_size:
                    await self._send(batch)
                    batch = []
            await self._send(batch)
            span.set_attribute("rows", len(rows))
        # Counted once per window or batch, not per message: the same totals for a fraction of the cost.
        for reason, count in inactive.items():
            self._metrics.inactive.add(count, reason=reason)
        self._metrics.windows.add()
        self._metrics.rows.add(len(rows))

    async def _send(self, batch: Sequence[IndicatorCollected]) -> None:
        await self._producer.send(INDICATORS_TOPIC, batch)
        for observable_type, count in Counter(str(item.observable.type) for item in batch).items():
            self._metrics.emitted.add(count, observable_type=observable_type)

    def _count_rejection(self, rejected: RowRejected) -> None:
        self._metrics.rejected.add(reason=str(rejected.reason))
        log.info(
            "rejected indicator %s: %s",
            rejected.indicator_id,
            rejected.reason,
            extra={"indicator_id": rejected.indicator_id, "rejection_reason": str(rejected.reason)},
        )
