"""The benchmark harness still runs on the current code: its smallest scenario, end to end, without the
issue's latencies (so it takes seconds). Nothing is timed; what is checked is that every figure is computed and
the run reconciles, so a restructure of the services cannot silently break `make bench`."""

from datetime import UTC, datetime, timedelta

import pytest

from bench.harness import RunOptions, run_scenario
from bench.scenarios import Group, Kind, Scenario

INDICATORS = 300


@pytest.mark.timeout(600)
def test_the_smallest_all_in_one_scenario_runs_and_reconciles() -> None:
    scenario = Scenario("all-in-one-300", "tibridge all-in-one", Kind.ALL_IN_ONE, Group.COMPARISON, INDICATORS)
    anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    run = run_scenario(scenario, RunOptions(seed=7, anchor=anchor, timeout_seconds=None, latencies_ms={}))

    assert run["finished"], run["problems"]
    assert run["problems"] == []
    assert run["delivered"]["ratio"] == 1.0
    assert run["delivered"]["expected"] > 0
    assert run["duplicates"] == 0
    counts = run["counts"]
    assert counts["emitted"] > 0
    assert counts["scored"] == counts["emitted"]
    assert counts["completed"] == counts["publish_verdicts"] + counts["expire_verdicts"]
    assert counts["held"] == 0
    assert run["graph"]["requests"] >= run["graph"]["floor"] > 0
    assert run["threatstream"]["requests"] > 0
    assert run["cpu"]["seconds_per_1000_indicators"] > 0
    assert run["tibridge_peak_rss_mib"] > 0
