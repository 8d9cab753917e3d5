"""`tibridge collector --since P90D [--plan] [--yes]`: a backfill planned, budgeted and shown as it goes.

Before anything is read, the collector's own count query (within its limits) counts the span's rows per day, and
its IP and domain rows; the plan says what that will ask of Log Analytics, Graph and ThreatStream at the rates the
settings allow (`tibridge.collector.plan`). `--plan` stops there. Otherwise a backfill past
TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS is refused unless `--yes`; then the collector runs, with a progress bar in a
terminal and progress lines in its log anywhere else.
"""

from __future__ import annotations

import functools
import os
import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tibridge.collector.app import build, count_backfill
from tibridge.collector.plan import BackfillPlan, Rates, budget_refusal, describe
from tibridge.collector.settings import CollectorSettings
from tibridge.common.clock import SystemClock
from tibridge.common.runtime import EXIT_BAD_SETTINGS, EXIT_OK, ServiceName, ServiceSpec, run_service
from tibridge.common.settings import BusKind, SettingsError, load_settings
from tibridge.publisher.settings import PublisherSettings
from tibridge.scorer.settings import LookupMode, ScorerSettings

# Graph's JSON batching carries at most 20 requests (external-apis §2).
LOOKUPS_PER_BATCH = 20


class BarProgress:
    """A backfill's progress as a rich bar (rows counted, share, elapsed, ETA) on a terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def start(self, plan: BackfillPlan) -> None:
        self._bar = Progress(
            TextColumn("[bold]backfill[/] {task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._bar.start()
        self._task = self._bar.add_task(f"from {plan.span.start:%Y-%m-%d %H:%M}", total=plan.rows)

    def advance(self, rows_done: int, published_until: datetime) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=rows_done, description=f"up to {published_until:%Y-%m-%d %H:%M}")

    def finish(self, *, completed: bool) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def other_stages(environment: dict[str, Any] | None = None) -> Rates:
    """The scorer's and publisher's rates as this environment sets them (their defaults where it does not); only
    the rates are read, so neither needs its credentials here."""
    values = {"bus": BusKind.MEMORY, **(environment or {})}
    scorer = load_settings(ScorerSettings, **values).graph
    # A dry-run file stands in for ThreatStream's credentials: the plan never sends anything.
    publisher = load_settings(PublisherSettings, **{"publisher_dry_run_file": os.devnull, **values})
    capped = scorer.max_lookups_per_second is not None
    return Rates(
        rows_per_query=1,
        concurrent_queries=1,
        queries_per_30_seconds=1,
        seconds_per_query=0.0,
        lookups_per_request=LOOKUPS_PER_BATCH if scorer.lookup_mode is LookupMode.BATCH else 1,
        lookups_per_second=scorer.max_lookups_per_second if capped else scorer.initial_lookups_per_second,
        lookup_rate_is_a_cap=capped,
        batch_size=publisher.publisher.batch_size,
        # The hard cap if one is set, else the adaptive rate's starting point (a floor: it rises while clean).
        threatstream_requests_per_second=publisher.threatstream.rate_per_second
        or publisher.threatstream.initial_rate_per_second,
    )


async def backfill(*, since: str | None, once: bool, plan_only: bool, yes: bool, console: Console | None = None) -> int:
    """The `tibridge collector` command: plan (and with `plan_only` stop), refuse past the budget, then run."""
    # The plan is the command's output (stdout, unwrapped); the bar goes with the logs, to stderr.
    out = console or Console(soft_wrap=True)
    values: dict[str, Any] = {"collector_mode": "once" if once else "loop"}
    if since is None:
        if plan_only:
            raise SettingsError(["--plan needs --since, the span to backfill (an ISO 8601 duration such as P90D)."])
        return await run_service(_spec(), **values)
    values["collector_since"] = since
    if yes:
        values["collector_backfill_confirmed"] = True
    settings = load_settings(CollectorSettings, **{**values, "bus": BusKind.MEMORY})
    plan = await count_backfill(settings, SystemClock(), other_stages())
    if plan is None:
        out.print(f"nothing to backfill: the span {since} ends before the settle delay leaves anything to read")
        return EXIT_OK
    for line in describe(plan):
        out.print(line, highlight=False, markup=False)
    collecting = settings.collector
    budget = collecting.backfill_max_rows
    refusal = budget_refusal(plan, budget, confirmed=collecting.backfill_confirmed)
    if plan_only:
        if budget is not None:
            verdict = "within it" if plan.rows <= budget else "past it: refused unless confirmed (--yes)"
            out.print(f"budget: TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS = {budget:,} rows; this backfill is {verdict}")
        return EXIT_OK
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    return await run_service(_spec(), **values)


def _spec() -> ServiceSpec[CollectorSettings]:
    """The collector's spec, its backfill shown as a bar when stderr is a terminal (log lines otherwise)."""
    console = Console(stderr=True)
    progress = BarProgress(console) if console.is_terminal else None
    return ServiceSpec(ServiceName.COLLECTOR, CollectorSettings, functools.partial(build, progress=progress))
