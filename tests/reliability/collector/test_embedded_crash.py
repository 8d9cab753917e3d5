"""Issue 13: the one-process deployment (`tibridge run --once`, the in-memory bus) SIGKILLed at seeded moments
— while ThreatStream refuses the key and the publisher holds its batch, mid-scoring, mid-publishing — and run
again: ThreatStream ends exactly as after an undisturbed run, nothing doubled.

The watermark moves only over windows whose indicators were settled end to end, so what died with the process
is read again from Log Analytics by the next run; ThreatStream's (value, itype) identity makes re-sending safe.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tibridge.sandbox import Outcome, SandboxConfig, SandboxServer
from tibridge.sandbox.faults import Api

TIBRIDGE = [sys.executable, "-m", "tibridge.cli"]
INDICATORS = 600
SEED = 13
RUN_TIMEOUT_SECONDS = 240.0
WAIT_TIMEOUT_SECONDS = 120.0


def sandbox(anchor: datetime) -> SandboxServer:
    return SandboxServer(SandboxConfig(indicators=INDICATORS, seed=SEED, anchor=anchor))


class Deployment:
    """`tibridge run --once` against one sandbox, with its own checkpoint, as separate processes one after another."""

    def __init__(self, server: SandboxServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.checkpoint = workdir / "checkpoint.json"
        self.runs = 0

    def environment(self, **overrides: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("TIBRIDGE_")}
        env.update(self.server.env())
        env.update(
            {
                "TIBRIDGE_HEALTH_PORT": "0",
                "TIBRIDGE_CHECKPOINT_PATH": str(self.checkpoint),
                "TIBRIDGE_PUBLISHER_MODE": "direct",
                "TIBRIDGE_PUBLISHER_BATCH_AGE_SECONDS": "1",
                "TIBRIDGE_COLLECTOR_SETTLE_DELAY": "PT0S",
                # Windows of ~100 rows: the watermark moves many times in a pass, so kills land between moves.
                "TIBRIDGE_COLLECTOR_ROWS_PER_QUERY": "100",
                **overrides,
            }
        )
        return env

    async def start(self, **overrides: str) -> asyncio.subprocess.Process:
        self.runs += 1
        log = (self.workdir / f"run-{self.runs}.log").open("wb")
        try:
            return await asyncio.create_subprocess_exec(
                *TIBRIDGE, "run", "--once", env=self.environment(**overrides), stdout=log, stderr=log
            )
        finally:
            log.close()

    async def run_to_the_end(self) -> None:
        process = await self.start()
        code = await asyncio.wait_for(process.wait(), RUN_TIMEOUT_SECONDS)
        assert code == 0, (self.workdir / f"run-{self.runs}.log").read_text()[-3000:]

    async def kill_when(
        self, moment: Callable[[], bool], *, rng: random.Random, within: float = 0.5, **overrides: str
    ) -> None:
        """Starts a run, waits for `moment` (then a seeded fraction of `within` seconds more), and SIGKILLs it."""
        process = await self.start(**overrides)
        try:
            await until(lambda: moment() or process.returncode is not None)
            await asyncio.sleep(rng.uniform(0.0, within))
            assert process.returncode is None, "the run ended before it could be killed"
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
            await process.wait()

    def watermark(self) -> datetime | None:
        if not self.checkpoint.exists():
            return None
        return datetime.fromisoformat(json.loads(self.checkpoint.read_text())["watermark"])

    def requests(self, api: Api, status: str | None = None) -> int:
        counted = self.server.state.stats.requests[api]
        return counted[status] if status else sum(counted.values())


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(int(WAIT_TIMEOUT_SECONDS / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the moment to kill never came")


def outcome(server: SandboxServer) -> tuple[set[tuple[str, str, str]], list[str], int]:
    """What ThreatStream holds of ours (value, itype, status), the reconciliation's findings, duplicates made."""
    held = {(obj.value, obj.itype, obj.status) for obj in server.state.intel.ours()}
    return held, server.reconcile(), server.state.intel.counts.duplicates_created


@pytest.mark.timeout(900)
async def test_killing_the_one_process_deployment_at_seeded_moments_delivers_everything_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    (tmp_path / "undisturbed").mkdir()
    (tmp_path / "killed").mkdir()

    async with sandbox(anchor) as server:
        await Deployment(server, tmp_path / "undisturbed").run_to_the_end()
        undisturbed = outcome(server)
    assert undisturbed[0], "the seeded data should make something publishable"

    async with sandbox(anchor) as server:
        deployment = Deployment(server, tmp_path / "killed")
        dataset = server.dataset
        expected = server.expected()

        # 1. ThreatStream refuses the key: the publisher holds its batch while the collector has read everything.
        await deployment.kill_when(
            lambda: deployment.requests("threatstream", "401") >= 2,
            rng=rng,
            TIBRIDGE_THREATSTREAM_API_KEY="not-the-key",
        )
        held_back = [
            row.time_generated
            for row in dataset.rows
            if expected.indicators.get(row.id) and expected.indicators[row.id].outcome is Outcome.PUBLISH
        ]
        watermark = deployment.watermark()
        # The watermark never passed an indicator that was still waiting to be published when the process died.
        assert watermark is None or watermark <= max(held_back), (watermark, max(held_back))
        assert deployment.requests("threatstream", "401") >= 2
        assert not list(server.state.intel.ours())

        # 2. Mid-scoring: a seeded number of Graph requests in.
        graph_so_far = deployment.requests("graph")
        await deployment.kill_when(lambda: deployment.requests("graph") >= graph_so_far + rng.randint(1, 3), rng=rng)

        # 3. Mid-publishing: some of ThreatStream's answers in, not all. The rest of a run takes well under half a
        # second once ThreatStream answers, so the kill comes within a twentieth of one.
        published_so_far = deployment.requests("threatstream", "202")
        await deployment.kill_when(
            lambda: deployment.requests("threatstream", "202") > published_so_far, rng=rng, within=0.05
        )

        # And a run that is left alone.
        await deployment.run_to_the_end()
        killed = outcome(server)

    assert deployment.runs == 4
    assert killed[0] == undisturbed[0], (
        f"missing {sorted(undisturbed[0] - killed[0])[:5]}, extra {sorted(killed[0] - undisturbed[0])[:5]}"
    )
    assert killed[1] == undisturbed[1]  # the same reconciliation: the kills changed nothing
    assert killed[2] == undisturbed[2] == 0
