"""How far a backfill has come: the port the collect pass reports to, and its log-line adapter.

A backfill pass counts its rows per day first (`plan.py`), then tells its `BackfillProgress` how many of those
counted rows lie before the end of each window it has published. In a terminal the `tibridge` command shows a
progress bar; everywhere else (a container, a CronJob, a pipe) `LogProgress` writes a log line every
`every_seconds` (TIBRIDGE_COLLECTOR_PROGRESS_INTERVAL) with the share done, the rows and an ETA from the pace so
far.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from tibridge.collector.plan import BackfillPlan
from tibridge.common.clock import Clock

log = logging.getLogger(__name__)


class BackfillProgress(Protocol):
    def start(self, plan: BackfillPlan) -> None: ...

    def advance(self, rows_done: int, published_until: datetime) -> None:
        """`rows_done` of the plan's counted rows lie before `published_until`, up to which all is published."""
        ...

    def finish(self, *, completed: bool) -> None: ...


class LogProgress:
    """Progress as log lines: at the start, at most every `every_seconds` while it runs, and at the end."""

    def __init__(self, clock: Clock, every_seconds: float) -> None:
        self._clock = clock
        self._every = every_seconds
        self._plan: BackfillPlan | None = None
        self._started = 0.0
        self._logged = 0.0
        self._done = 0

    def start(self, plan: BackfillPlan) -> None:
        self._plan, self._done = plan, 0
        self._started = self._logged = self._clock.monotonic()
        log.info(
            "backfill of %s rows from %s to %s; progress every %.0f s",
            f"{plan.rows:,}",
            plan.span.start.isoformat(),
            plan.span.end.isoformat(),
            self._every,
            extra={"backfill_rows": plan.rows},
        )

    def advance(self, rows_done: int, published_until: datetime) -> None:
        plan = self._plan
        if plan is None:
            return
        self._done = rows_done
        now = self._clock.monotonic()
        if now - self._logged < self._every:
            return
        self._logged = now
        share = rows_done / plan.rows if plan.rows else 1.0
        elapsed = now - self._started
        eta = f"ETA {_clock_time(elapsed / share - elapsed)}" if share > 0 else "ETA unknown"
        log.info(
            "backfill %.0f%%: %s of %s rows, published up to %s, %s",
            share * 100,
            f"{rows_done:,}",
            f"{plan.rows:,}",
            published_until.isoformat(),
            eta,
            extra={"backfill_rows": plan.rows, "backfill_rows_done": rows_done},
        )

    def finish(self, *, completed: bool) -> None:
        plan = self._plan
        if plan is None:
            return
        elapsed = _clock_time(self._clock.monotonic() - self._started)
        if completed:
            log.info("backfill done: %s rows in %s", f"{plan.rows:,}", elapsed)
        else:
            log.warning("backfill stopped after %s at %s of %s rows", elapsed, f"{self._done:,}", f"{plan.rows:,}")
        self._plan = None


def _clock_time(seconds: float) -> str:
    return str(timedelta(seconds=round(max(0.0, seconds))))
