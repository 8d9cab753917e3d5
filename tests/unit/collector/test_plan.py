"""A backfill's plan from its rows per day: the figures, the budget's one sentence, and how far a pass has come."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tibridge.collector.plan import (
    REQUESTS_PER_BATCH,
    BackfillPlan,
    Rates,
    budget_refusal,
    describe,
    pass_queries,
    plan_backfill,
)
from tibridge.collector.windows import Bin, Window

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
SPAN = Window(NOW - timedelta(days=3), NOW)  # 2026-11-29 12:00 → 2026-12-02 12:00
DAYS = [
    Bin(datetime(2026, 11, 29, tzinfo=UTC), 1_000),
    Bin(datetime(2026, 11, 30, tzinfo=UTC), 4_000),
    Bin(datetime(2026, 12, 1, tzinfo=UTC), 10_000),
    Bin(datetime(2026, 12, 2, tzinfo=UTC), 5_000),
]
RATES = Rates(
    rows_per_query=5_000,
    concurrent_queries=5,
    queries_per_30_seconds=200,
    seconds_per_query=2.0,
    lookups_per_request=20,
    lookups_per_second=100.0,
    batch_size=1_000,
    threatstream_requests_per_second=5.0,
)


def test_the_plan_adds_the_days_and_prices_each_stage() -> None:
    plan = plan_backfill(SPAN, DAYS, RATES, scorable_days=[Bin(d.start, d.rows // 2) for d in DAYS])
    assert (plan.rows, plan.scorable_rows) == (20_000, 10_000)
    # The optimistic read, the count, then 4 windows of at most 5,000 rows.
    assert plan.queries == 6
    stages = {stage.name: stage for stage in plan.stages}
    assert stages["Log Analytics"].requests == 6
    assert stages["Log Analytics"].seconds == 4.0  # two rounds of five queries at 2 s
    assert (stages["Graph"].requests, stages["Graph"].seconds) == (500, 100.0)
    assert stages["ThreatStream"].requests == 20 * REQUESTS_PER_BATCH
    assert stages["ThreatStream"].seconds == 12.0
    assert (plan.seconds, plan.slowest) == (100.0, "Graph")


def test_without_the_other_services_settings_only_log_analytics_is_priced() -> None:
    reading = Rates(rows_per_query=5_000, concurrent_queries=5, queries_per_30_seconds=200, seconds_per_query=1.0)
    plan = plan_backfill(SPAN, DAYS, reading)
    assert [stage.name for stage in plan.stages] == ["Log Analytics"]
    lines = describe(plan)
    assert "Graph: not estimated (the scorer's settings are not known here)" in lines
    assert "ThreatStream: not estimated (the publisher's settings are not known here)" in lines
    assert not any("not estimated" in line for line in describe(plan, unpriced=False))


@pytest.mark.parametrize(("rows", "queries"), [(0, 1), (5_000, 1), (5_001, 4), (50_000, 12)])
def test_a_pass_reads_once_and_past_the_limit_counts_and_cuts(rows: int, queries: int) -> None:
    assert pass_queries(rows, 5_000) == queries


def test_log_analytics_rate_limit_bounds_many_fast_queries() -> None:
    fast = Rates(rows_per_query=10, concurrent_queries=5, queries_per_30_seconds=200, seconds_per_query=0.01)
    plan = plan_backfill(SPAN, [Bin(SPAN.start, 4_000)], fast)
    assert plan.queries == 402
    # 402 queries: 200 in the first 30 s, 200 in the next, 2 after that.
    assert plan.stages[0].seconds == 60.0


def test_progress_counts_whole_days_and_the_share_of_a_day_by_time() -> None:
    plan = plan_backfill(SPAN, DAYS, RATES)
    assert plan.rows_before(SPAN.start) == 0
    # The first bin starts before the span: its rows are spread over the part inside it (12:00 → midnight).
    assert plan.rows_before(datetime(2026, 11, 29, 18, tzinfo=UTC)) == 500
    assert plan.rows_before(datetime(2026, 12, 1, tzinfo=UTC)) == 5_000
    assert plan.rows_before(datetime(2026, 12, 1, 6, tzinfo=UTC)) == 7_500
    assert plan.rows_before(SPAN.end) == 20_000


def test_the_budget_refuses_with_one_sentence_naming_the_setting_and_the_way_past() -> None:
    plan = plan_backfill(SPAN, DAYS, RATES)
    refusal = budget_refusal(plan, 19_999, confirmed=False)
    assert refusal == (
        "the backfill 2026-11-29 12:00 → 2026-12-02 12:00 UTC holds 20,000 rows, more than "
        "TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS (19,999); run it anyway with --yes (or "
        "TIBRIDGE_COLLECTOR_BACKFILL_CONFIRMED=true), raise the budget, or backfill a shorter span"
    )
    assert budget_refusal(plan, 19_999, confirmed=True) is None
    assert budget_refusal(plan, 20_000, confirmed=False) is None
    assert budget_refusal(plan, None, confirmed=False) is None


def test_the_description_says_what_the_estimate_rests_on() -> None:
    plan: BackfillPlan = plan_backfill(SPAN, DAYS, RATES, scorable_days=DAYS[:1])
    lines = describe(plan)
    assert lines[0] == "backfill 2026-11-29 12:00 → 2026-12-02 12:00 UTC (3 days 0 h): 20,000 rows in Log Analytics"
    assert lines[1:5] == [
        "  2026-11-29         1,000",
        "  2026-11-30         4,000",
        "  2026-12-01        10,000",
        "  2026-12-02         5,000",
    ]
    assert lines[5].startswith("Log Analytics: 6 queries (windows of at most 5,000 rows, 5 at once, 2.0 s each")
    assert lines[6].startswith("Graph: at most 1,000 lookups (one per IP or domain row) in at most 50 requests of 20")
    assert "a count cannot tell repeats apart" in lines[6]
    assert lines[7].startswith("ThreatStream: at most 60 requests (3 per batch of 1,000")
    assert lines[8] == (
        "estimate: at most 12 s, set by ThreatStream (stages overlap; no 429s assumed; the CPU of this machine not "
        "counted)"
    )
    assert describe(plan, per_day=False)[1].startswith("Log Analytics:")
