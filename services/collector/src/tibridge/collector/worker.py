"""The collect pass and the worker that runs it once or on an interval.

A pass reads the span from the saved watermark (minus the overlap) to now (minus the settle delay), window by
window, oldest first. A window that comes back partial or at the row cap is halved and read again; every
indicator of a window is on the bus before the watermark moves to the window's end. Re-reading a window is
harmless: message ids are deterministic and the topic drops duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from opentelemetry import metrics, trace

from tibridge.collector.checkpoint import CheckpointError, CheckpointStore
from tibridge.collector.rows import Row, RowReader, RowRejected
from tibridge.collector.source import IndicatorSource, SourceError
from tibridge.collector.windows import SpanPolicy, Window, pass_span, split
from tibridge.common.bus.port import Bus, BusError, OutgoingMessage
from tibridge.common.clock import Clock
from tibridge.common.contracts import envelope_for
from tibridge.common.telemetry import current_trace_context
from tibridge.common.topology import INDICATORS_TOPIC

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tibridge.collector")
_meter = metrics.get_meter("tibridge.collector")
_rows_read = _meter.create_counter("tibridge.collector.rows", description="Rows read from Log Analytics")
_emitted = _meter.create_counter("tibridge.collector.emitted", description="Indicators published, by type")
_rejected = _meter.create_counter("tibridge.collector.rejected", description="Rows refused, by reason")
_inactive = _meter.create_counter(
    "tibridge.collector.inactive", description="Indicators emitted flagged inactive, by reason"
)
_splits = _meter.create_counter("tibridge.collector.window_splits", description="Windows halved (partial or capped)")
_lag = _meter.create_histogram(
    "tibridge.collector.watermark_lag", unit="s", description="How far the saved watermark trails the clock"
)


class RunMode(StrEnum):
    ONCE = "once"  # one pass, then return (a CronJob / Container Apps job)
    LOOP = "loop"  # a pass every interval until stopped


@dataclass(frozen=True)
class CollectorOptions:
    span: SpanPolicy
    min_window: timedelta  # a window this short that is still too big is an error, never a truncation
    row_cap: int  # a result with this many rows may be truncated: split the window
    batch_size: int  # messages per bus publish
    mode: RunMode = RunMode.ONCE
    interval: timedelta = timedelta(minutes=5)
    since: timedelta | None = None  # a backfill: read from now minus this, whatever the watermark


class WindowTooDense(Exception):
    """Even the smallest window holds more rows than one query may return."""


@dataclass
class CollectorCounts:
    passes: int = 0
    failed_passes: int = 0
    windows: int = 0
    splits: int = 0
    rows_read: int = 0
    emitted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    inactive: Counter[str] = field(default_factory=Counter)
    watermark: datetime | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "failed_passes": self.failed_passes,
            "windows": self.windows,
            "splits": self.splits,
            "rows_read": self.rows_read,
            "emitted": self.emitted,
            "rejected": dict(sorted(self.rejected.items())),
            "inactive": dict(sorted(self.inactive.items())),
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "last_error": self.last_error,
        }


class Collector:
    """The collector's worker: `run` does one pass (once) or a pass every interval (loop)."""

    name = "collector"

    def __init__(
        self,
        source: IndicatorSource,
        store: CheckpointStore,
        bus: Bus,
        reader: RowReader,
        options: CollectorOptions,
        clock: Clock,
    ) -> None:
        self._source = source
        self._store = store
        self._bus = bus
        self._reader = reader
        self._options = options
        self._clock = clock
        self.stats = CollectorCounts()

    def counts(self) -> dict[str, Any]:
        return self.stats.as_dict()

    async def readiness(self) -> str | None:
        return self.stats.last_error

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.collect(stop)
            except (SourceError, CheckpointError, WindowTooDense, BusError) as error:
                self.stats.failed_passes += 1
                self.stats.last_error = str(error)
                if self._options.mode is RunMode.ONCE:
                    raise
                log.error("collect pass failed, next try in %s: %s", self._options.interval, error)
            if self._options.mode is RunMode.ONCE:
                return
            await self._pause(stop)

    async def collect(self, stop: asyncio.Event) -> None:
        """One pass; returns early (between windows) when `stop` is set."""
        now = self._clock.now()
        watermark = await self._store.load()
        span = pass_span(self._options.span, now, watermark, self._options.since)
        self.stats.passes += 1
        self.stats.watermark = watermark
        if span is not None:
            log.info("collecting %s → %s", span.start.isoformat(), span.end.isoformat())
        # A stack, oldest window on top: halves are pushed back in order, so windows finish oldest first.
        pending = list(reversed(list(split(span, self._options.span.window)))) if span else []
        while pending and not stop.is_set():
            window = pending.pop()
            result = await self._source.read(window)
            if not result.complete or len(result.rows) >= self._options.row_cap:
                first, second = self._halve(window, len(result.rows), result.complete)
                pending += [second, first]
                continue
            await self._publish_window(window, result.rows, now)
            if watermark is None or window.end > watermark:  # a backfill never moves the watermark back
                await self._store.save(window.end)
                watermark = window.end
                self.stats.watermark = watermark
                _lag.record((self._clock.now() - watermark).total_seconds())
        if not stop.is_set():
            self.stats.last_error = None

    def _halve(self, window: Window, rows: int, complete: bool) -> tuple[Window, Window]:
        if window.span / 2 < self._options.min_window:
            why = "a partial result" if not complete else f"{rows} rows (the row cap)"
            raise WindowTooDense(
                f"the window {window.start.isoformat()} → {window.end.isoformat()} still returns {why} at the "
                f"smallest span; lower TIBRIDGE_COLLECTOR_MIN_WINDOW (now {self._options.min_window})"
            )
        self.stats.splits += 1
        _splits.add(1)
        log.info("window %s → %s returned %s; halving it", window.start.isoformat(), window.end.isoformat(), rows)
        return window.halves()

    async def _publish_window(self, window: Window, rows: Sequence[Row], now: datetime) -> None:
        emitted: Counter[str] = Counter()  # by observable type
        inactive: Counter[str] = Counter()  # by reason
        with _tracer.start_as_current_span(
            "collector.window",
            attributes={"window.start": window.start.isoformat(), "window.end": window.end.isoformat()},
        ) as span:
            traceparent, tracestate = current_trace_context()
            batch: list[OutgoingMessage] = []
            for row in rows:
                outcome = self._reader.read(row, now)
                if isinstance(outcome, RowRejected):
                    self._count_rejection(outcome)
                    continue
                if outcome.inactive_reason is not None:
                    inactive[str(outcome.inactive_reason)] += 1
                envelope = envelope_for(outcome, produced_at=now, traceparent=traceparent, tracestate=tracestate)
                batch.append(OutgoingMessage.from_envelope(envelope))
                emitted[str(outcome.observable.type)] += 1
                if len(batch) >= self._options.batch_size:
                    await self._publish(batch)
                    batch = []
            if batch:
                await self._publish(batch)
            span.set_attribute("rows", len(rows))
        # Metrics once per window, not per message: the same totals for a fraction of the cost.
        for observable_type, count in emitted.items():
            _emitted.add(count, {"observable_type": observable_type})
        for reason, count in inactive.items():
            _inactive.add(count, {"reason": reason})
        self.stats.inactive.update(inactive)
        self.stats.windows += 1
        self.stats.rows_read += len(rows)
        _rows_read.add(len(rows))

    async def _publish(self, batch: list[OutgoingMessage]) -> None:
        await self._bus.publish(INDICATORS_TOPIC, batch)
        self.stats.emitted += len(batch)

    def _count_rejection(self, rejected: RowRejected) -> None:
        self.stats.rejected[str(rejected.reason)] += 1
        _rejected.add(1, {"reason": str(rejected.reason)})
        log.info(
            "rejected indicator %s: %s",
            rejected.indicator_id,
            rejected.reason,
            extra={"indicator_id": rejected.indicator_id, "rejection_reason": str(rejected.reason)},
        )

    async def _pause(self, stop: asyncio.Event) -> None:
        """Waits one interval, or less when `stop` is set."""
        stopped = asyncio.ensure_future(stop.wait())
        slept = asyncio.ensure_future(self._clock.sleep(self._options.interval.total_seconds()))
        try:
            await asyncio.wait({stopped, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopped, slept):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
