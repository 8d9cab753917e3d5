"""The collector as composed by `build`, through the azure-monitor-query SDK, against the sandbox's Log Analytics."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tests.fixtures.clock import ManualClock
from tests.fixtures.collector import collected_payloads, drain
from tests.fixtures.collector_sandbox import (
    AFTER_DATA,
    ANCHOR,
    assert_matches_expected,
    collector_for,
    rejections_logged,
)
from tibridge.collector.source import SourceError
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox import Dataset, Outcome, SandboxConfig, SandboxServer, generate

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
    return SandboxServer(SandboxConfig(dataset=dataset, anchor=ANCHOR, days=14, **config))


async def test_fifty_thousand_rows_reach_the_bus_exactly_as_the_generator_expects(
    large_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(large_dataset.rows) >= 49_000
    bus = MemoryBus()
    async with SandboxServer(SandboxConfig(dataset=large_dataset, anchor=ANCHOR, days=LARGE_DAYS)) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, tmp_path / "checkpoint.json") as run:
                started = time.perf_counter()
                await run.worker.run(asyncio.Event())
                elapsed = time.perf_counter() - started
        envelopes = await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
        expected = server.expected()
        queries = server.state.stats.loganalytics.queries
    counts = assert_matches_expected(expected, envelopes, rejections)
    worker_counts = run.worker.counts()
    assert worker_counts.emitted == counts["messages"]
    assert sum(worker_counts.rejected.values()) + worker_counts.emitted == worker_counts.rows_read
    assert queries == worker_counts.windows
    assert worker_counts.splits == 0
    print(f"\n{len(large_dataset.rows)} rows → {counts} in {elapsed:.1f}s over {queries} queries")


async def test_a_row_cap_far_below_the_window_size_still_yields_every_row(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset, row_cap=40) as server:  # the service truncates at 40 rows
        with rejections_logged(caplog) as rejections:
            async with collector_for(
                server, bus, tmp_path / "checkpoint.json", collector_window=timedelta(days=3)
            ) as run:
                await run.worker.run(asyncio.Event())
        partial_results = server.state.stats.loganalytics.partial_results
        assert_matches_expected(server.expected(), await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION), rejections)
    assert partial_results > 0
    assert run.worker.counts().splits >= partial_results


async def test_the_collectors_own_row_cap_splits_windows_that_reach_it(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    async with server_for(small_dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, tmp_path / "c.json", loganalytics_row_cap=25) as run:
                await run.worker.run(asyncio.Event())
        assert server.state.stats.loganalytics.partial_results == 0
        assert_matches_expected(server.expected(), await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION), rejections)
    assert run.worker.counts().splits > 0


async def test_server_errors_are_retried_until_every_window_is_read(
    small_dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bus = MemoryBus()
    # Half as likely as not to fail would make 10 failures in a row a few-percent event over ~60 windows.
    faults = {"loganalytics": {"p500": 0.1, "p503": 0.1}}
    async with server_for(small_dataset, faults=faults) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, tmp_path / "c.json", loganalytics_query_attempts=10) as run:
                await run.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION), rejections)
        failures = server.state.stats.requests["loganalytics"]
    assert failures["500"] + failures["503"] > 0


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
        async with collector_for(server, bus, tmp_path / "c.json", collector_table="legacy") as run:
            await run.worker.run(asyncio.Event())
        expected = server.expected()
    newest = {p.indicator_id: p for p in collected_payloads(await drain(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION))}
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
        async with collector_for(server, bus, tmp_path / "unused.json", **blob_settings) as run:
            await run.worker.run(asyncio.Event())
        later = ManualClock(AFTER_DATA + timedelta(hours=1))
        async with collector_for(server, bus, tmp_path / "unused.json", later, **blob_settings) as rerun:
            await rerun.worker.run(asyncio.Event())
    async with BlobServiceClient.from_connection_string(azurite) as service:
        blob = service.get_blob_client(blob_settings["checkpoint_container"], "collector-checkpoint.json")
        stored = json.loads(await (await blob.download_blob()).readall())
    assert stored["watermark"] == (later.now() - timedelta(minutes=5)).isoformat()
    assert not (tmp_path / "unused.json").exists()
    assert run.worker.counts().windows > 50
    # The second run read only from the watermark minus the overlap: one window.
    assert rerun.worker.counts().windows == 1
