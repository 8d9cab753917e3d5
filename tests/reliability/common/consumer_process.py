"""Drives `slow_consumer` as a real process for the SIGTERM tests: start, wait for mid-work, SIGTERM, collect.

The scenario: odd-numbered indicators take WORK_SECONDS, even-numbered ones never finish on their own. SIGTERM
arrives while a quick one is in flight, so one stop shows both paths: quick work finishes within the grace
period and is completed; stuck work is abandoned and comes back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.messages import collected_envelope
from tests.fixtures.runtime import eventually

ROOT = Path(__file__).resolve().parents[3]
MESSAGES = 12
IN_FLIGHT = 8
WORK_SECONDS = 0.3
STUCK_SECONDS = 3600.0
GRACE_SECONDS = "3"
EXIT_TIMEOUT_SECONDS = 60.0


@dataclass
class ConsumerRun:
    """What the consumer process said on stdout, line by line, and what it was doing when SIGTERM came."""

    lines: list[list[str]] = field(default_factory=list)
    in_flight_at_sigterm: set[str] = field(default_factory=set)
    stderr: str = ""
    exit_code: int | None = None

    def ids(self, step: str) -> set[str]:
        return {words[1] for words in self.lines if words[0] == step}

    def in_flight(self) -> set[str]:
        return self.ids("received") - self.ids("completing")

    def reported(self, label: str) -> set[str]:
        [listed] = [words[1] for words in self.lines if words[0] == label]
        return set(json.loads(listed))


def published() -> dict[str, int]:
    """message id → indicator number, for every message of the scenario."""
    return {collected_envelope(number).message_id: number for number in range(1, MESSAGES + 1)}


def is_quick(message_id: str) -> bool:
    return published()[message_id] % 2 == 1


def environment(**settings: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("TIBRIDGE_", "OTEL_"))}
    return {
        **inherited,
        "TIBRIDGE_HEALTH_PORT": "0",
        "TIBRIDGE_SCORER_MAX_IN_FLIGHT": str(IN_FLIGHT),
        "TIBRIDGE_SHUTDOWN_GRACE_SECONDS": GRACE_SECONDS,
        **settings,
    }


async def run_and_terminate(settings: dict[str, str], *, publish_itself: bool) -> ConsumerRun:
    """Starts the consumer, sends SIGTERM while a quick message is in flight, collects everything until exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.common.slow_consumer",
        f"--messages={MESSAGES if publish_itself else 0}",
        f"--work-seconds={WORK_SECONDS}",
        f"--stuck-seconds={STUCK_SECONDS}",
        cwd=ROOT,
        env=environment(**settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    run = ConsumerRun()

    async def read_stdout() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            run.lines.append(line.decode().strip().split(maxsplit=1))

    def quick_work_in_flight() -> bool:
        return bool(run.ids("completed")) and any(is_quick(message_id) for message_id in run.in_flight())

    reader = asyncio.create_task(read_stdout())
    stderr = asyncio.create_task(process.stderr.read())
    try:
        await eventually(
            lambda: quick_work_in_flight() or reader.done(), within=EXIT_TIMEOUT_SECONDS, what="reaching mid-work"
        )
        assert not reader.done(), "the consumer exited before it was sent SIGTERM"
        run.in_flight_at_sigterm = run.in_flight()
        process.send_signal(signal.SIGTERM)
        run.exit_code = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
        run.stderr = (await stderr).decode()
    return run


def assert_stopped_without_loss(run: ConsumerRun, left: set[str], dead: set[str]) -> None:
    """Exit 0; every message completed exactly or back on the subscription; in-flight work finished or returned."""
    assert run.exit_code == 0, run.stderr
    assert "SIGTERM received" in run.stderr
    completed = run.ids("completed")
    # Cut off between settling and saying so: completed or back, either is fine, but it must be one of them.
    unsure = run.ids("completing") - completed
    assert dead == set()
    assert completed.isdisjoint(left)
    assert completed | left | unsure == set(published())
    assert set(published()) - completed - unsure <= left
    quick = {message_id for message_id in run.in_flight_at_sigterm if is_quick(message_id)}
    stuck = run.in_flight_at_sigterm - quick
    assert quick, "SIGTERM was meant to arrive while quick work was in flight"
    assert quick <= completed, "in-flight work that fits in the grace period is finished"
    assert stuck <= left, "in-flight work that outlasts the grace period goes back to the bus"
