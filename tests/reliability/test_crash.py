"""Issue 13.4: services killed at any moment and started again change nothing.

* The three services as processes over the wire-level Service Bus double, each SIGKILLed at seeded random
  moments during a run and started again at once: ThreatStream ends exactly as in an undisturbed run of the
  same data (every object, its itype, status and subtype), no duplicate created, nothing left unsettled, the
  same dead-letter queues.
* The collector killed after a window is on the bus and before its watermark is saved: the next pass reads the
  window again and the topic's duplicate detection drops what it re-sends — every indicator once.
* Two collectors sharing one Blob checkpoint (Azurite, started by the test fixture): one wins, the other stops
  with a conflict, and the bus holds every indicator once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.collector_sandbox import (
    ANCHOR,
    assert_matches_expected,
    collector_for,
    rejections_logged,
    sandbox_on_clock,
)
from tests.fixtures.sandbox import SandboxFactory
from tests.fixtures.servicebus import EMULATOR_CONFIG
from tests.reliability.figures import Figure, Figures
from tests.reliability.pipeline import (
    DIRECT,
    SERVICES,
    SUBSCRIPTIONS,
    Contents,
    Run,
    ThreeProcesses,
    contents_problems,
    hour_now,
    threatstream_contents,
    values_for,
)
from tests.reliability.sizes import Size
from tests.sbdouble import ServiceBusDouble, load_config
from tibridge.collector import app as collector_app
from tibridge.collector.checkpoint import CheckpointConflict, CheckpointStore
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.contracts import Envelope, decode
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox import SandboxServer

pytestmark = pytest.mark.usefixtures("restored_logging")

SEED = 41
# Short locks, so what a killed process held comes back within seconds.
LOCK_SECONDS = 5.0
SETTLE_SECONDS = 1200.0
BATCH = 40  # the collector publishes in small batches, so a window takes several publishes


@contextlib.contextmanager
def fresh_double() -> Iterator[ServiceBusDouble]:
    """A namespace of its own: a second run of the same data must not meet the first run's duplicate detection."""
    double = ServiceBusDouble(load_config(EMULATOR_CONFIG)).start()
    try:
        for topic, sub in SUBSCRIPTIONS:
            double.set_lock_duration(topic, sub, LOCK_SECONDS)
        yield double
    finally:
        double.stop()
    assert not double.errors, f"the Service Bus double hit internal errors: {double.errors!r}"


class Timings:
    """How long an undisturbed run's collector pass and whole run took: where the kills are spread."""

    def __init__(self) -> None:
        self.collector_seconds = 0.0
        self.run_seconds = 0.0


async def three_process_run(
    server: SandboxServer, tmp_path: Path, name: str, kills: list[tuple[float, str]], rng: random.Random
) -> tuple[Run, Contents, Timings]:
    logs = tmp_path / name
    logs.mkdir()
    timings = Timings()
    loop = asyncio.get_running_loop()
    with fresh_double() as double:
        values = values_for(server, logs / "checkpoint.json", DIRECT, collector_batch_size=BATCH)
        async with ThreeProcesses(double, values, logs) as processes:
            started = loop.time()
            for moment, service in kills:
                await asyncio.sleep(max(0.0, started + moment - loop.time()))
                await processes.check_collector()
                if service == "collector" and processes.collector_finished:
                    continue
                await processes.kill(service)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                await processes.restart(service)
            while not processes.collector_finished:
                await processes.check_collector()
                await asyncio.sleep(0.2)
            timings.collector_seconds = loop.time() - started
            await processes.until_done(within=SETTLE_SECONDS)
            timings.run_seconds = loop.time() - started
            codes = await processes.stop()
            run = processes.run(max(codes.values()))
    return run, threatstream_contents(server), timings


async def test_sigkilling_each_service_at_seeded_moments_leaves_threatstream_as_an_undisturbed_run(
    sandbox_factory: SandboxFactory, tmp_path: Path, size: Size, figures: Figures
) -> None:
    config: dict[str, Any] = {"indicators": size.crash_indicators, "seed": SEED, "anchor": hour_now()}
    rng = random.Random(SEED)
    async with sandbox_factory(**config) as server:
        calm, reference, timings = await three_process_run(server, tmp_path, "undisturbed", [], rng)
        assert calm.code == 0
    kills = sorted(
        (
            rng.uniform(0.05, 0.9) * (timings.collector_seconds if service == "collector" else timings.run_seconds),
            service,
        )
        for service in SERVICES
        for _ in range(size.kills_per_service)
    )
    async with sandbox_factory(**config) as server:
        run, contents, _ = await three_process_run(server, tmp_path, "killed", kills, rng)
        duplicates = server.stats()["threatstream"]["duplicates_created"]
    problems = contents_problems(contents, reference)
    if duplicates:
        problems.append(f"ThreatStream created {duplicates} duplicate(s)")
    if run.unsettled:
        problems.append(f"messages left unsettled: {run.unsettled}")
    if run.code != 0:
        problems.append(f"a service exited with {run.code} on SIGTERM")
    dead = Counter((letter.queue, letter.value, letter.reason) for letter in run.dead_letters)
    calm_dead = Counter((letter.queue, letter.value, letter.reason) for letter in calm.dead_letters)
    if set(dead) != set(calm_dead):
        problems.append(f"dead-letter queues differ from the undisturbed run's: {set(dead) ^ set(calm_dead)}")
    figures.record(
        "Crash test — three processes over the Service Bus double, SIGKILL and restart",
        Figure(
            f"{size.crash_indicators:,} indicators, {size.kills_per_service} kills per service",
            kills=run.kills,
            delivered=sum((contents & reference).values()),
            expected=sum(reference.values()),
            duplicates=duplicates,
            dead_lettered=len(run.dead_letters),
            passed=not problems,
            note="; ".join(problems)[:300],
        ),
    )
    assert run.kills >= 2 * size.kills_per_service, "the scorer and the publisher were meant to be killed mid-run"
    assert problems == []


class FreezingStore:
    """A checkpoint store whose first save at or past `freeze_from` hangs until `kill`: the process is killed right
    then, after that window was published and before its watermark was written."""

    def __init__(self, inner: CheckpointStore, freeze_from: datetime | None) -> None:
        self._inner = inner
        self._freeze_from = freeze_from
        self.frozen = asyncio.Event()
        self._killed = asyncio.Event()

    def kill(self) -> None:
        """The process dies during the frozen save: it ends without having written anything."""
        self._killed.set()

    async def load(self) -> datetime | None:
        return await self._inner.load()

    @property
    def quiet_since(self) -> datetime | None:
        return self._inner.quiet_since

    async def save(self, watermark: datetime, *, quiet_since: datetime | None = None) -> None:
        if self._freeze_from is not None and watermark >= self._freeze_from:
            self.frozen.set()
            await self._killed.wait()
            raise asyncio.CancelledError
        await self._inner.save(watermark, quiet_since=quiet_since)


@contextlib.asynccontextmanager
async def double_bus(double: ServiceBusDouble) -> AsyncIterator[ServiceBusBus]:
    bus = ServiceBusBus.from_connection_string(double.connection_string)
    try:
        yield bus
    finally:
        await bus.close()


def envelopes_on(double: ServiceBusDouble) -> list[Envelope]:
    envelopes = [decode(message.body) for message in double.messages(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)]
    assert all(isinstance(envelope, Envelope) for envelope in envelopes)
    return envelopes  # type: ignore[return-value]


async def undisturbed_collector_run(server: SandboxServer, tmp_path: Path, **settings: Any) -> set[str]:
    """The message ids one uninterrupted collector pass puts on the bus."""
    with fresh_double() as double:
        async with double_bus(double) as bus, collector_for(server, bus, tmp_path / "calm.json", **settings) as calm:
            await calm.worker.run(asyncio.Event())
        return {envelope.message_id for envelope in envelopes_on(double)}


COLLECTOR_SETTINGS: dict[str, Any] = {"collector_batch_size": BATCH, "collector_rows_per_query": 300}
# A watermark in the middle of the data: windows before it hold indicators, and so do windows after it.
FREEZE_FROM = ANCHOR - timedelta(days=7)


async def test_the_collector_killed_between_publishing_and_saving_its_watermark_loses_and_doubles_nothing(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    figures: Figures,
) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    stores: list[FreezingStore] = []
    original = collector_app.checkpoint_store

    def freezing_store(*args: Any) -> CheckpointStore:
        store = FreezingStore(original(*args), FREEZE_FROM if not stores else None)
        stores.append(store)
        return store

    async with sandbox_on_clock(indicators=1500, seed=SEED) as server:
        calm = await undisturbed_collector_run(server, tmp_path, **COLLECTOR_SETTINGS)
        monkeypatch.setattr(collector_app, "checkpoint_store", freezing_store)
        with fresh_double() as double, rejections_logged(caplog) as rejections:
            async with double_bus(double) as bus:
                async with collector_for(server, bus, checkpoint, **COLLECTOR_SETTINGS) as doomed:
                    task = asyncio.create_task(doomed.worker.run(asyncio.Event()))
                    await asyncio.wait_for(stores[0].frozen.wait(), 120)
                    # SIGKILL: nothing after this moment of the pass runs, and the save never writes.
                    stores[0].kill()
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                before = len(envelopes_on(double))
                assert 0 < before < len(calm), "the kill was meant to land mid-pass"
                async with collector_for(server, bus, checkpoint, **COLLECTOR_SETTINGS) as rerun:
                    await rerun.worker.run(asyncio.Event())
            envelopes = envelopes_on(double)
        ids = [envelope.message_id for envelope in envelopes]
        same = len(ids) == len(set(ids)) and set(ids) == calm
        figures.record(
            "Crash test — collector",
            Figure(
                "killed between publishing a window and saving its watermark",
                kills=1,
                delivered=len(set(ids) & calm),
                expected=len(calm),
                duplicates=len(ids) - len(set(ids)),
                passed=same,
            ),
        )
        assert len(ids) == len(set(ids)), "a message reached the bus twice"
        assert set(ids) == calm, "the bus holds other messages than after an uninterrupted pass"
        # The window whose watermark was never saved was read and sent again; the topic dropped the copies.
        assert rerun.worker.counts().emitted > len(envelopes) - before
        assert_matches_expected(server.expected(), envelopes, rejections)


@pytest.mark.azurite
async def test_two_collectors_on_one_blob_checkpoint_one_stops_with_a_conflict_and_nothing_is_lost(
    azurite: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    figures: Figures,
) -> None:
    blob: dict[str, Any] = {
        **COLLECTOR_SETTINGS,
        "checkpoint_store": "blob",
        "checkpoint_connection_string": azurite,
        "checkpoint_container": f"crash-{uuid.uuid4().hex[:12]}",
    }
    async with sandbox_on_clock(indicators=1500, seed=SEED) as server:
        calm = await undisturbed_collector_run(server, tmp_path, **COLLECTOR_SETTINGS)
        with fresh_double() as double, rejections_logged(caplog) as rejections:
            async with (
                double_bus(double) as bus,
                collector_for(server, bus, tmp_path / "unused.json", **blob) as first,
                collector_for(server, bus, tmp_path / "unused.json", **blob) as second,
            ):
                results = await asyncio.gather(
                    first.worker.run(asyncio.Event()), second.worker.run(asyncio.Event()), return_exceptions=True
                )
            envelopes = envelopes_on(double)
        ids = {envelope.message_id for envelope in envelopes}
        figures.record(
            "Crash test — collector",
            Figure(
                "two collectors on one Blob checkpoint (Azurite)",
                delivered=len(ids & calm),
                expected=len(calm),
                passed=ids == calm,
            ),
        )
        assert sorted(type(result).__name__ for result in results) == ["CheckpointConflict", "NoneType"]
        assert any(isinstance(result, CheckpointConflict) for result in results)
        assert ids == calm, "the bus holds other messages than after one uninterrupted pass"
        assert_matches_expected(server.expected(), envelopes, rejections)
