"""The collector as composed by `build`, through the azure-monitor-query SDK, against the strict sandbox's Log
Analytics (5 concurrent queries, 200 per 30 s, 429 + Retry-After beyond), both on one ManualClock."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tests.fixtures.collector import collected_payloads, draining
from tests.fixtures.collector_sandbox import (
    ANCHOR,
    assert_matches_expected,
    clock_of,
    collector_for,
    rejections_logged,
    sandbox_on_clock,
)
from tibridge.collector.source import SourceError
from tibridge.common.bus.memory import MemoryBus
from tibridge.sandbox import Dataset, Outcome, SandboxServer, generate

# ~50,000 rows: 20,000 indicators over 28 days, each re-published about weekly.
LARGE_INDICATORS = 20_000
LARGE_DAYS = 28


@pytest.fixture(scope="module")
def large_dataset() -> Iterator[Dataset]:
    dataset = generate(LARGE_INDICATORS, seed=20261101, anchor=ANCHOR, days=LARGE_DAYS)
    # The dataset lives in the collector's process only in this test; frozen, the garbage collector stops
    # rescanning its ~10^6 objects on every collection (a third of the collector's CPU time otherwise).
    gc.freeze()
    yield dataset
    gc.unfreeze()


@pytest.fixture(scope="module")
def small_dataset() -> Dataset:
    return generate(1500, seed=7, anchor=ANCHOR, days=14)


def server_for(dataset: Dataset, **config: Any) -> SandboxServer:
    return sandbox_on_clock(dataset=dataset, days=14, **config)


async def test_fifty_thousand_rows_reach_the_bus_exactly_as_the_generator_expects(
    large_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(large_dataset.rows) >= 49_000
    bus = MemoryBus()
    async with sandbox_on_clock(dataset=large_dataset, days=LARGE_DAYS) as server:
        with rejections_logged(caplog) as rejections:
            async with (
                collector_for(server, bus, tmp_path / "checkpoint.json", collector_rows_per_query=5000) as run,
                draining(bus) as envelopes,
            ):
                started = time.perf_counter()
                await run.worker.run(asyncio.Event())
                elapsed = time.perf_counter() - started
        expected = server.expected()
        stats = server.state.stats.loganalytics
    counts = assert_matches_expected(expected, envelopes, rejections)
    worker_counts = run.worker.counts()
    assert worker_counts.emitted == counts["messages"]
    assert sum(worker_counts.rejected.values()) + worker_counts.emitted == worker_counts.rows_read
    # 28 days of ~50,000 rows (20,000 indicators): one read past its byte budget (5,000 rows' worth), one count,
    # then windows of at most 5,000 rows by the count (of every copy), read five at a time.
    assert stats.queries == worker_counts.queries
    assert (worker_counts.count_queries, worker_counts.splits) == (1, 1)
    assert 10 <= worker_counts.windows <= 13
    assert stats.peak_concurrent <= 5
    assert server.state.stats.inside_retry_after["loganalytics"] == 0
    print(f"\n{len(large_dataset.rows)} rows → {counts} in {elapsed:.1f}s over {stats.queries} queries")


async def test_a_fortnight_of_a_few_thousand_rows_is_one_query(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, tmp_path / "c.json") as run, draining(bus) as envelopes:
                await run.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), envelopes, rejections)
        assert server.state.stats.loganalytics.queries == 1
        # Five minutes later: the steady pass reads from the watermark minus the overlap, in one query too.
        clock_of(server).advance(timedelta(minutes=5))
        async with collector_for(server, bus, tmp_path / "c.json") as steady, draining(bus):
            await steady.worker.run(asyncio.Event())
        assert server.state.stats.loganalytics.queries == 2
    assert (steady.worker.counts().queries, steady.worker.counts().windows) == (1, 1)


async def test_a_row_cap_far_below_the_window_size_still_yields_every_row(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset, row_cap=40) as server:  # the service truncates at 40 rows
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, tmp_path / "checkpoint.json") as run, draining(bus) as envelopes:
                await run.worker.run(asyncio.Event())
        stats = server.state.stats
        assert_matches_expected(server.expected(), envelopes, rejections)
    # Only the first read came back partial: it taught the plan what the service returns at most.
    assert stats.loganalytics.partial_results == 1
    assert run.worker.counts().splits >= 1
    # About 2,200 rows in windows of 36: dozens of queries, never more than 5 at once, none inside a Retry-After.
    assert stats.loganalytics.queries > 50
    assert stats.loganalytics.peak_concurrent <= 5
    assert stats.inside_retry_after["loganalytics"] == 0


async def test_the_collectors_own_row_cap_splits_windows_that_reach_it(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with (
                collector_for(server, bus, tmp_path / "c.json", loganalytics_row_cap=25) as run,
                draining(bus) as envelopes,
            ):
                await run.worker.run(asyncio.Event())
        assert server.state.stats.loganalytics.partial_results == 0
        assert_matches_expected(server.expected(), envelopes, rejections)
    assert run.worker.counts().splits > 0


async def test_server_errors_are_retried_until_every_window_is_read(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    # Half as likely as not to fail would make 10 failures in a row a few-percent event over ~60 windows.
    faults = {"loganalytics": {"p500": 0.1, "p503": 0.1, "p429": 0.05, "retry_after_seconds": 3}}
    async with server_for(small_dataset, faults=faults) as server:
        with rejections_logged(caplog) as rejections:
            async with (
                collector_for(
                    server, bus, tmp_path / "c.json", loganalytics_query_attempts=10, collector_rows_per_query=40
                ) as run,
                draining(bus) as envelopes,
            ):
                await run.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), envelopes, rejections)
        stats = server.state.stats
    failures = stats.requests["loganalytics"]
    assert failures["500"] + failures["503"] > 0
    assert failures["429"] > 0
    assert stats.inside_retry_after["loganalytics"] == 0
    assert stats.loganalytics.peak_concurrent <= 5


async def test_the_rate_window_is_kept_without_a_single_429(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    # A tight window (20 per 30 s) the collector is told about: hundreds of queries, paced, none refused.
    async with server_for(small_dataset, loganalytics_requests_per_window=20) as server:
        with rejections_logged(caplog) as rejections:
            async with (
                collector_for(
                    server,
                    bus,
                    tmp_path / "c.json",
                    loganalytics_requests_per_30_seconds=20,
                    collector_rows_per_query=15,
                ) as run,
                draining(bus) as envelopes,
            ):
                await run.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), envelopes, rejections)
        stats = server.state.stats
    assert run.worker.counts().queries > 100
    assert stats.requests["loganalytics"].get("429", 0) == 0
    assert stats.loganalytics.peak_concurrent <= 5


async def test_a_429_storm_costs_a_query_its_attempts_once_and_the_sdk_retries_nothing_underneath(
    small_dataset: Dataset, tmp_path: Path
) -> None:
    # Every query is throttled: the SDK's own retry policy (off) and the engine's budget (3) are one budget.
    faults = {"loganalytics": {"p429": 1.0, "retry_after_seconds": 2}}
    async with server_for(small_dataset, faults=faults) as server:
        async with collector_for(server, MemoryBus(), tmp_path / "c.json", loganalytics_query_attempts=3) as run:
            with pytest.raises(SourceError, match=r"kept failing \(429\) after 3 attempts"):
                await run.worker.run(asyncio.Event())
        stats = server.state.stats
    assert dict(stats.requests["loganalytics"]) == {"429": 3}
    assert stats.inside_retry_after["loganalytics"] == 0
    assert run.clock.sleeps.count(2.0) == 2  # each retry waited the announced Retry-After
    assert not (tmp_path / "c.json").exists()


async def test_an_empty_workspace_answers_204_and_that_is_zero_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with sandbox_on_clock(indicators=0) as server:
        with caplog.at_level(logging.WARNING, logger="tibridge.collector.worker"):
            # The sandbox's environment has the first pass read a day back here (its data is none).
            async with collector_for(server, bus, tmp_path / "c.json", collector_no_rows_warning_after="PT12H") as run:
                await run.worker.run(asyncio.Event())
        assert server.state.stats.loganalytics.no_content == 1
    counts = run.worker.counts()
    assert (counts.failed_passes, counts.rows_read, counts.last_error) == (0, 0, None)
    # A day without a single Microsoft Threat Intelligence row: said in the log and in readiness.
    note = await run.worker.readiness()
    assert note is not None
    assert "TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS" in note
    assert any("no Microsoft Threat Intelligence (formerly MDTI) rows" in r.getMessage() for r in caplog.records)


async def test_a_wrong_workspace_is_a_clear_error_and_the_watermark_stays(
    small_dataset: Dataset, tmp_path: Path
) -> None:
    async with (
        server_for(small_dataset) as server,
        collector_for(
            server,
            MemoryBus(),
            tmp_path / "c.json",
            loganalytics_workspace_id="00000000-0000-4000-8000-000000000000",
        ) as run,
    ):
        with pytest.raises(SourceError, match="TIBRIDGE_LOGANALYTICS_WORKSPACE_ID"):
            await run.worker.run(asyncio.Event())
    assert not (tmp_path / "c.json").exists()


async def test_the_legacy_table_yields_the_same_observables(small_dataset: Dataset, tmp_path: Path) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset) as server:
        async with (
            collector_for(server, bus, tmp_path / "c.json", collector_table="legacy") as run,
            draining(bus) as envelopes,
        ):
            await run.worker.run(asyncio.Event())
        expected = server.expected()
    newest = {p.indicator_id: p for p in collected_payloads(envelopes)}
    # Indicators with an ObservableKey have a legacy column for it; pattern-only ones have none.
    keyed = {
        indicator_id: expectation
        for indicator_id, expectation in expected.indicators.items()
        if expectation.outcome in (Outcome.PUBLISH, Outcome.DROP, Outcome.EXPIRE)
        and small_dataset.newest[indicator_id].observable_key
    }
    assert set(keyed) == set(newest)
    for indicator_id, expectation in keyed.items():
        observable = newest[indicator_id].observable
        assert (observable.type, observable.value) == (expectation.observable_type, expectation.canonical_value)
        assert newest[indicator_id].active == (expectation.outcome is not Outcome.EXPIRE)
    assert run.worker.counts().rejected.get("unsupported_type", 0) > 0


@pytest.mark.azurite
async def test_the_blob_checkpoint_carries_the_watermark_to_the_next_run(
    small_dataset: Dataset, tmp_path: Path, azurite: str
) -> None:
    blob_settings: dict[str, Any] = {
        "checkpoint_store": "blob",
        "checkpoint_connection_string": azurite,
        "checkpoint_container": f"collector-{uuid.uuid4().hex[:12]}",
    }
    bus = MemoryBus()
    async with server_for(small_dataset) as server:
        async with collector_for(server, bus, tmp_path / "unused.json", **blob_settings) as run, draining(bus):
            await run.worker.run(asyncio.Event())
        clock_of(server).advance(timedelta(hours=1))
        async with collector_for(server, bus, tmp_path / "unused.json", **blob_settings) as rerun, draining(bus):
            await rerun.worker.run(asyncio.Event())
        later = clock_of(server).now()
    async with BlobServiceClient.from_connection_string(azurite) as service:
        blob = service.get_blob_client(blob_settings["checkpoint_container"], "collector-checkpoint.json")
        stored = json.loads(await (await blob.download_blob()).readall())
    assert stored["watermark"] == (later - timedelta(minutes=5)).isoformat()
    assert not (tmp_path / "unused.json").exists()
    assert run.worker.counts().queries == 1
    # The second run read only from the watermark minus the overlap: one window.
    assert rerun.worker.counts().windows == 1
