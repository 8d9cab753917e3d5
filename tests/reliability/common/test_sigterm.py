"""SIGTERM to a consumer process mid-work: it exits 0 and no message is lost (each completed or back on the bus)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.runtime import collected_envelope, eventually
from tibridge.common.contracts import Envelope

ROOT = Path(__file__).resolve().parents[3]
MESSAGES = 12
IN_FLIGHT = 4
WORK_SECONDS = 0.3
EXIT_TIMEOUT_SECONDS = 60.0


@dataclass
class ConsumerRun:
    """What the consumer process said on stdout, line by line."""

    lines: list[list[str]] = field(default_factory=list)
    stderr: str = ""
    exit_code: int | None = None

    def ids(self, step: str) -> set[str]:
        return {words[1] for words in self.lines if words[0] == step}

    def reported(self, label: str) -> set[str]:
        [listed] = [words[1] for words in self.lines if words[0] == label]
        return set(json.loads(listed))


def environment(**settings: str) -> dict[str, str]:
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("TIBRIDGE_", "OTEL_"))}
    return {**inherited, "TIBRIDGE_HEALTH_PORT": "0", "TIBRIDGE_MAX_IN_FLIGHT": str(IN_FLIGHT), **settings}


async def run_and_terminate(
    settings: dict[str, str], *, publish_itself: int, when: Callable[[ConsumerRun], bool]
) -> ConsumerRun:
    """Starts the consumer, sends SIGTERM once `when(run)` holds, and collects everything until it exits."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reliability.common.slow_consumer",
        f"--messages={publish_itself}",
        f"--work-seconds={WORK_SECONDS}",
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

    reader = asyncio.create_task(read_stdout())
    stderr = asyncio.create_task(process.stderr.read())
    try:
        await eventually(lambda: when(run) or reader.done(), within=EXIT_TIMEOUT_SECONDS, what="reaching mid-work")
        assert not reader.done(), "the consumer exited before it was sent SIGTERM"
        process.send_signal(signal.SIGTERM)
        run.exit_code = await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
        run.stderr = (await stderr).decode()
    return run


def mid_work(run: ConsumerRun) -> bool:
    """Some messages completed and others are being worked on right now."""
    return bool(run.ids("completed")) and bool(run.ids("received") - run.ids("completing"))


def assert_nothing_lost(run: ConsumerRun, published: set[str], left: set[str], dead: set[str]) -> None:
    assert run.exit_code == 0, run.stderr
    completed = run.ids("completed")
    # Cut off between settling and saying so: completed or back, either is fine, but it must be one of them.
    unsure = run.ids("completing") - completed
    assert dead == set()
    assert completed.isdisjoint(left)
    assert completed | left | unsure == published
    assert (published - completed - unsure) <= left


def published_ids() -> set[str]:
    envelopes: list[Envelope] = [collected_envelope(number) for number in range(1, MESSAGES + 1)]
    return {envelope.message_id for envelope in envelopes}


@pytest.mark.parametrize(
    ("grace_seconds", "in_flight_work"),
    [("30", "finishes"), ("0.1", "is abandoned")],
    ids=["grace-long-enough", "grace-too-short"],
)
async def test_sigterm_mid_work_on_the_memory_bus_loses_nothing(grace_seconds: str, in_flight_work: str) -> None:
    run = await run_and_terminate(
        {"TIBRIDGE_BUS": "memory", "TIBRIDGE_SHUTDOWN_GRACE_SECONDS": grace_seconds},
        publish_itself=MESSAGES,
        when=mid_work,
    )
    left, dead = run.reported("left"), run.reported("dead")
    assert_nothing_lost(run, published_ids(), left, dead)
    interrupted = run.ids("received") - run.ids("completing")
    if in_flight_work == "finishes":
        assert interrupted == set()
    else:
        assert interrupted
        assert interrupted <= left
    assert ["exit", "0"] in run.lines
