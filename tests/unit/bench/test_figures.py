"""The benchmark harness's own arithmetic: delivered ÷ expected, request floors, rates, ratios, targets."""

from typing import Any

import pytest

from bench import figures
from bench.counts import StageCounts, pipeline_counts, read_stage_counts
from bench.targets import evaluate, speedup
from tibridge.common.consumer import SettledCounts
from tibridge.scorer.cache import CacheCounts
from tibridge.scorer.handler import ScorerCounts, VerdictCounts
from tibridge.scorer.reputation import GraphCounts


def test_delivery_compares_canonical_forms_and_counts_what_should_not_be_there() -> None:
    delivery = figures.delivery(
        expected_active={"evil.example", "2001:db8::1", "203.0.113.5"},
        expected_not_active={"https://x.example/a"},
        active=["EVIL.example", "2001:0DB8:0000::1", "https://x.example/a", "other.example", "evil[.]example"],
    )
    assert (delivery.expected, delivery.delivered) == (3, 2)
    assert delivery.ratio == pytest.approx(2 / 3)
    assert delivery.extra == 3  # the URL, other.example and the defanged spelling
    assert delivery.wrongly_active == 1


def test_delivery_of_nothing_expected_is_complete() -> None:
    assert figures.delivery(set(), set(), []).ratio == 1.0


@pytest.mark.parametrize(("unique", "floor"), [(0, 0), (1, 1), (20, 1), (21, 2), (2868, 144)])
def test_graph_floor_is_one_request_per_twenty_lookups(unique: int, floor: int) -> None:
    assert figures.graph_floor(unique) == floor


def test_threatstream_bound_adds_the_profiles_to_the_full_batches() -> None:
    assert figures.threatstream_bound(2001, 1000, 2) == 5
    assert figures.threatstream_bound(0, 1000, 0) == 0


def test_ratio_is_unknown_without_a_denominator() -> None:
    assert figures.ratio(10, 4) == 2.5
    assert figures.ratio(10, 0) is None
    assert figures.ratio(None, 4) is None


def test_sustained_rate_ignores_the_slow_start_and_the_trickling_end() -> None:
    samples = [(0.0, 0), (1.0, 0), (2.0, 100), (3.0, 300), (4.0, 500), (5.0, 700), (6.0, 900), (7.0, 990), (9.0, 1000)]
    # 5% (50) is first reached at 2 s with 100; 95% (950) at 7 s with 990.
    assert figures.sustained_rate(samples) == pytest.approx((990 - 100) / 5)
    assert figures.sustained_rate([(0.0, 0), (1.0, 0)]) is None
    assert figures.sustained_rate([(0.0, 5)]) is None


def test_first_time_reaching() -> None:
    assert figures.first_time_reaching([(1.0, 3), (2.0, 7), (3.0, 7)], 7) == 2.0
    assert figures.first_time_reaching([(1.0, 3)], 7) is None


def _scorer_counts(publish: int, drop: int, retries: int) -> ScorerCounts:
    return ScorerCounts(
        verdicts=VerdictCounts(publish={"score": publish}, drop={"below_threshold": drop}, expire={}),
        classifications={"malicious": publish},
        cache=CacheCounts(hits=0, misses=publish + drop, shared=0),
        graph=GraphCounts(batch_requests=1, items=publish + drop, throttled=1, retries=retries, requests=2),
        settled=SettledCounts(completed=publish + drop, abandoned=0, dead_lettered=0, lock_lost=0),
    )


def test_counts_of_several_scorers_add_up_after_the_trip_through_a_report() -> None:
    reports = [
        StageCounts(scorers=[_scorer_counts(3, 1, retries=2)]).as_json(),
        StageCounts(scorers=[_scorer_counts(5, 0, retries=0)]).as_json(),
    ]
    stages = read_stage_counts(reports)
    assert stages.scorers[0] == _scorer_counts(3, 1, retries=2)
    counts = pipeline_counts(stages)
    assert (counts.scored, counts.publish_verdicts, counts.expire_verdicts) == (9, 8, 0)
    assert (counts.graph_requests, counts.graph_retries, counts.graph_throttled) == (4, 2, 2)
    assert counts.lanes == 1
    assert (counts.emitted, counts.completed) == (0, 0)  # no collector or publisher in these reports


def _run(**fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "scenario": "s",
        "kind": "all-in-one",
        "group": "comparison",
        "threatstream_mode": "direct",
        "indicators": 10_000,
        "finished": True,
        "end_to_end_seconds": 4.0,
        "delivered": {"ratio": 1.0},
        "duplicates": 0,
        "problems": [],
        "graph_ceiling": None,
        "inside_retry_after": 0,
        "cpu": {"seconds_per_1000_indicators": 0.2, "tibridge_startup_seconds": 1.5},
        "tibridge_peak_rss_mib": 100.0,
        "graph": {"requests": 150, "floor": 144, "retries": 3},
        "threatstream": {"requests": 12, "bound": 12},
        "stage_seconds": {"scored": None},
        "scorers": None,
    }
    run.update(fields)
    return run


def test_targets_judge_speed_cpu_and_request_bounds() -> None:
    baseline = _run(kind="logic-app-model", end_to_end_seconds=100.0)
    fast = _run()
    assert speedup(fast, baseline) == 25.0
    verdicts = {verdict.target.split(" ")[0]: verdict for verdict in evaluate([baseline, fast])}
    speed = next(v for v in evaluate([baseline, fast]) if "Logic App" in v.target)
    assert speed.met is True
    slow = next(v for v in evaluate([baseline, _run(end_to_end_seconds=50.0)]) if "Logic App" in v.target)
    assert slow.met is False
    assert slow.gap == "10.0× too slow"
    cpu = next(
        v
        for v in evaluate([_run(cpu={"seconds_per_1000_indicators": 0.9, "tibridge_startup_seconds": 1})])
        if "CPU" in v.target
    )
    assert (cpu.met, cpu.gap) == (False, "3.6× over")
    graph = next(
        v for v in evaluate([_run(graph={"requests": 148, "floor": 144, "retries": 3})]) if "Graph" in v.target
    )
    assert graph.met is False
    assert verdicts  # every target has a verdict, measured or not


def test_ceiling_and_memory_targets() -> None:
    ceiling = _run(group="ceiling", graph_ceiling=200.0, ceiling_ratio=0.95, lookups_per_second=190.0)
    small, large = (
        _run(tibridge_peak_rss_mib=100.0),
        _run(group="scaling", indicators=1_000_000, tibridge_peak_rss_mib=160.0),
    )
    verdicts = evaluate([ceiling, small, large])
    assert next(v for v in verdicts if "ceiling 200" in v.target).met is True
    memory = next(v for v in verdicts if "RSS" in v.target)
    assert (memory.met, memory.gap) == (False, "1.1× over")
