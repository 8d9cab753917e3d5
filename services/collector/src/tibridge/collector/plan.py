"""A backfill you can see coming: what reading a span will cost, from its rows per day, before anything is read.

Pure functions over the counts a Log Analytics count query returns (`summarize count() by bin(TimeGenerated, 1d)`,
the collector's own count query) and the rates the settings allow. The counts are of rows, every re-published
copy included (Sentinel re-publishes each indicator every 7 to 10 days), so every figure derived from them is an
upper bound: a count cannot tell repeats of one indicator or host apart, and the scorer's cache answers a
repeated host without a Graph request. The time estimate assumes the stages overlap (the slowest sets the pace),
no 429, and the machine's CPU not being the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tibridge.collector.windows import Bin, Window

DAY = timedelta(days=1)
# The requests one direct-mode batch costs ThreatStream: what changed since the last batch, the upsert, and the
# read-back that confirms it (a 2xx says only that the JSON was valid). An approval-mode batch costs the read of
# changes, an import session per profile and the polls that follow each session: at least as many.
REQUESTS_PER_BATCH = 3
# Log Analytics counts queries in 30-second windows.
_RATE_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class Rates:
    """What the estimate assumes: the settings' caps and defaults, and one measured latency."""

    rows_per_query: int  # TIBRIDGE_COLLECTOR_ROWS_PER_QUERY (below TIBRIDGE_LOGANALYTICS_ROW_CAP)
    concurrent_queries: int  # TIBRIDGE_LOGANALYTICS_MAX_CONCURRENT_QUERIES
    queries_per_30_seconds: int  # TIBRIDGE_LOGANALYTICS_REQUESTS_PER_30_SECONDS
    seconds_per_query: float  # what the plan's own count query took
    lookups_per_request: int | None = None  # 20 with $batch, 1 with single GETs; None: the scorer's unknown
    lookups_per_second: float | None = None  # TIBRIDGE_GRAPH_MAX_LOOKUPS_PER_SECOND, else the starting rate
    lookup_rate_is_a_cap: bool = False  # whether that rate is a hard cap (else the rate adapts from it)
    batch_size: int | None = None  # TIBRIDGE_PUBLISHER_BATCH_SIZE
    threatstream_requests_per_second: float | None = None  # the cap, else the starting rate


@dataclass(frozen=True)
class Stage:
    """One stage's share of the backfill: its requests and the time they take at the assumed rate."""

    name: str
    requests: int
    seconds: float


@dataclass(frozen=True)
class BackfillPlan:
    span: Window
    days: Sequence[Bin]  # rows per UTC day, oldest first, empty days left out; the first may start before span
    rows: int
    scorable_rows: int | None  # rows whose key is an IP or a domain (what Graph is asked about); None: not counted
    queries: int  # Log Analytics queries the pass sends: its reads and counts
    stages: Sequence[Stage]
    rates: Rates  # what the estimate assumed

    @property
    def seconds(self) -> float:
        """The estimate: the stages overlap, so the slowest sets the pace."""
        return max((stage.seconds for stage in self.stages), default=0.0)

    @property
    def slowest(self) -> str | None:
        return max(self.stages, key=lambda stage: stage.seconds).name if self.stages else None

    def rows_before(self, moment: datetime) -> int:
        """Counted rows generated before `moment`, a day's rows spread evenly over it: how far a backfill that
        has published everything up to `moment` has come."""
        done = 0.0
        for day in self.days:
            start, end = max(day.start, self.span.start), min(day.start + DAY, self.span.end)
            if moment >= end:
                done += day.rows
            elif moment > start:
                done += day.rows * ((moment - start) / (end - start))
        return min(self.rows, round(done))


def plan_backfill(
    span: Window, days: Sequence[Bin], rates: Rates, *, scorable_days: Sequence[Bin] | None = None
) -> BackfillPlan:
    """The plan of reading `span`, counted per day (`days`, and optionally the IP and domain rows per day)."""
    rows = sum(day.rows for day in days)
    scorable = None if scorable_days is None else sum(day.rows for day in scorable_days)
    queries = pass_queries(rows, rates.rows_per_query)
    stages = [Stage("Log Analytics", queries, _query_seconds(queries, rates))]
    if scorable is not None and rates.lookups_per_request and rates.lookups_per_second:
        requests = math.ceil(scorable / rates.lookups_per_request)
        stages.append(Stage("Graph", requests, scorable / rates.lookups_per_second))
    if rates.batch_size and rates.threatstream_requests_per_second:
        requests = math.ceil(rows / rates.batch_size) * REQUESTS_PER_BATCH
        stages.append(Stage("ThreatStream", requests, requests / rates.threatstream_requests_per_second))
    return BackfillPlan(span, tuple(days), rows, scorable, queries, tuple(stages), rates)


def pass_queries(rows: int, rows_per_query: int) -> int:
    """Queries a pass sends over `rows` counted rows: the optimistic read of the whole span; past `rows_per_query`
    that read is abandoned, the span counted, and read in windows of at most `rows_per_query` rows."""
    if rows <= rows_per_query:
        return 1
    return 2 + math.ceil(rows / rows_per_query)


def _query_seconds(queries: int, rates: Rates) -> float:
    at_once = math.ceil(queries / rates.concurrent_queries) * rates.seconds_per_query
    # Each full window of queries waits for the next 30 seconds to begin.
    by_rate = ((queries - 1) // rates.queries_per_30_seconds) * _RATE_WINDOW_SECONDS
    return max(at_once, by_rate)


def budget_refusal(plan: BackfillPlan, max_rows: int | None, *, confirmed: bool) -> str | None:
    """The one sentence refusing a backfill past the budget, or None when it may run."""
    if max_rows is None or plan.rows <= max_rows or confirmed:
        return None
    return (
        f"the backfill {plan.span.start:%Y-%m-%d %H:%M} → {plan.span.end:%Y-%m-%d %H:%M} UTC holds {plan.rows:,} rows, "
        f"more than TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS ({max_rows:,}); run it anyway with --yes (or "
        "TIBRIDGE_COLLECTOR_BACKFILL_CONFIRMED=true), raise the budget, or backfill a shorter span"
    )


def describe(plan: BackfillPlan, *, per_day: bool = True, unpriced: bool = True) -> list[str]:
    """The plan as lines for a person: what it reads (`per_day`: each day's rows), what it will ask of each API
    (`unpriced`: saying so of a stage it has no rates for), how long, and on what it rests."""
    span, rates = plan.span, plan.rates
    lines = [
        f"backfill {span.start:%Y-%m-%d %H:%M} → {span.end:%Y-%m-%d %H:%M} UTC ({_duration(span.span)}): "
        f"{plan.rows:,} rows in Log Analytics",
        *(f"  {max(day.start, span.start):%Y-%m-%d}  {day.rows:>12,}" for day in plan.days if per_day),
        f"Log Analytics: {plan.queries:,} {'query' if plan.queries == 1 else 'queries'} "
        f"(windows of at most {rates.rows_per_query:,} rows, "
        f"{rates.concurrent_queries} at once, {rates.seconds_per_query:.1f} s each as the count took)",
    ]
    stages = {stage.name: stage for stage in plan.stages}
    if plan.scorable_rows is None or "Graph" not in stages:
        if unpriced:
            lines.append("Graph: not estimated (the scorer's settings are not known here)")
    else:
        graph = stages["Graph"]
        rate = f"{rates.lookups_per_second:g} lookups/s ({'its cap' if rates.lookup_rate_is_a_cap else 'its start'})"
        lines.append(
            f"Graph: at most {plan.scorable_rows:,} lookups (one per IP or domain row) in at most {graph.requests:,} "
            f"requests of {rates.lookups_per_request}, {_duration(timedelta(seconds=graph.seconds))} at {rate}; "
            "fewer when hosts repeat: every repeat within TIBRIDGE_SCORER_CACHE_TTL_SECONDS is answered by the "
            "cache, and a count cannot tell repeats apart"
        )
    if "ThreatStream" in stages:
        threatstream = stages["ThreatStream"]
        lines.append(
            f"ThreatStream: at most {threatstream.requests:,} requests ({REQUESTS_PER_BATCH} per batch of "
            f"{rates.batch_size:,}; only what the scorer publishes or expires is sent), "
            f"{_duration(timedelta(seconds=threatstream.seconds))} at {rates.threatstream_requests_per_second:g}/s"
        )
    elif unpriced:
        lines.append("ThreatStream: not estimated (the publisher's settings are not known here)")
    lines.append(
        f"estimate: at most {_duration(timedelta(seconds=plan.seconds))}, set by {plan.slowest} (stages overlap; "
        "no 429s assumed; the CPU of this machine not counted)"
    )
    return lines


def _duration(span: timedelta) -> str:
    seconds = round(span.total_seconds())
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days} days {hours} h"
