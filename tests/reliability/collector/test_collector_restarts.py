"""Killing the collector mid-run, losing the bus, or running two at once: nothing lost, nothing twice downstream.

The collector runs on the in-memory bus with a consumer downstream (`draining`), so its watermark waits for
each window to be settled there, as in the all-in-one process."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.collector import FlakyBus, collected_payloads, draining
from tests.fixtures.collector_sandbox import (
    AFTER_DATA,
    ANCHOR,
    assert_matches_expected,
    clock_of,
    collector_for,
    rejections_logged,
    sandbox_on_clock,
)
from tibridge.collector.checkpoint import CheckpointConflict, FileCheckpointStore
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import BusError, OutgoingMessage
from tibridge.sandbox import Dataset, generate

BATCH = 40  # small batches, so a window takes many publishes and a kill lands inside one
# Windows of at most 400 rows by the count: a window holds several batches, a pass many windows.
PLANNED: dict[str, Any] = {"collector_batch_size": BATCH, "collector_rows_per_query": 400}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate(3000, seed=99, anchor=ANCHOR, days=14)


async def saved(checkpoint: Path) -> None:
    """Waits (a minute at most, for a loaded machine) until the collector has saved a watermark."""
    for _ in range(6000):
        if await asyncio.to_thread(checkpoint.exists):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watermark never moved")


class StallingBus(MemoryBus):
    """Accepts `publishes` batches, then hangs on the next one (a process frozen mid-window, about to be killed)."""

    def __init__(self, publishes: int) -> None:
        super().__init__()
        self.remaining = publishes
        self.stalled = asyncio.Event()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        if self.remaining == 0:
            self.stalled.set()
            await asyncio.Event().wait()
        self.remaining -= 1
        await super().publish(topic, messages)

    def resume(self) -> None:
        self.remaining = -1


async def test_killing_the_collector_mid_window_then_running_it_again_loses_and_duplicates_nothing(
    dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    bus = StallingBus(publishes=25)
    async with sandbox_on_clock(dataset=dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, checkpoint, **PLANNED) as run, draining(bus) as before_kill:
                task = asyncio.create_task(run.worker.run(asyncio.Event()))
                await bus.stalled.wait()
                # Frozen mid-window, the collector still moves its watermark as the windows before are delivered.
                await saved(checkpoint)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            watermark = await FileCheckpointStore(checkpoint).load()
            assert watermark is not None
            # Killed inside a window: part of it is on the bus, but the watermark has not moved past it.
            assert any(collected_payloads([e])[0].time_generated >= watermark for e in before_kill)
            bus.resume()
            clock_of(server).advance(timedelta(minutes=3))
            async with collector_for(server, bus, checkpoint, **PLANNED) as rerun, draining(bus) as after_restart:
                await rerun.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), before_kill + after_restart, rejections)
    # The rerun read the interrupted window again; what it re-sent the topic's duplicate detection dropped.
    assert rerun.worker.counts().emitted > len(after_restart)


async def test_a_bus_outage_stops_the_pass_before_the_watermark_moves_past_unsent_messages(
    dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    bus = FlakyBus(fail_after=30)
    async with sandbox_on_clock(dataset=dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with collector_for(server, bus, checkpoint, **PLANNED) as run, draining(bus) as first:
                with pytest.raises(BusError):
                    await run.worker.run(asyncio.Event())
            assert run.worker.counts().failed_passes == 1
            watermark = await FileCheckpointStore(checkpoint).load()
            assert watermark is None or watermark < AFTER_DATA - timedelta(days=1)
            bus.heal()
            async with collector_for(server, bus, checkpoint, **PLANNED) as rerun, draining(bus) as second:
                await rerun.worker.run(asyncio.Event())
        assert_matches_expected(server.expected(), first + second, rejections)


async def test_two_collectors_at_once_cannot_both_move_the_watermark(
    dataset: Dataset, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    bus = MemoryBus()
    async with sandbox_on_clock(dataset=dataset) as server:
        with rejections_logged(caplog) as rejections:
            async with (
                collector_for(server, bus, checkpoint, **PLANNED) as first,
                collector_for(server, bus, checkpoint, **PLANNED) as second,
                draining(bus) as envelopes,
            ):
                results = await asyncio.gather(
                    first.worker.run(asyncio.Event()), second.worker.run(asyncio.Event()), return_exceptions=True
                )
        assert sorted(type(result).__name__ for result in results) == ["CheckpointConflict", "NoneType"]
        assert any(isinstance(result, CheckpointConflict) for result in results)
        assert_matches_expected(server.expected(), envelopes, rejections)
    assert await FileCheckpointStore(checkpoint).load() == AFTER_DATA - timedelta(minutes=5)
