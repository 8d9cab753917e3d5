"""Issue 13.2: a one-shot run whose dependency keeps refusing us ends, non-zero, after its bound — and loses nothing.

`tibridge run --once` with ThreatStream refusing the key, or Graph refusing the token, must stop by itself once
it has not been ready for TIBRIDGE_ONCE_REFUSED_SECONDS, with exit code 3 and one log line saying what to fix.
The next run, with the dependency accepting us again, must leave ThreatStream exactly as a run that never met
the refusal does. On Service Bus the undelivered messages wait on their subscriptions; on the in-memory bus
they die with the process, so the watermark must not have moved past them (the collector's part of issue 13).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.reliability.pipeline import (
    DIRECT,
    ROOT,
    contents_problems,
    environment,
    hour_now,
    run_all_in_one,
    threatstream_contents,
    values_for,
)
from tests.sbdouble import ServiceBusDouble
from tibridge.cli.commands import run_pipeline
from tibridge.common.runtime import EXIT_DEPENDENCY_REFUSED
from tibridge.common.settings import BusKind

pytestmark = pytest.mark.usefixtures("restored_logging")

INDICATORS = 300
SEED = 21
REFUSED_SECONDS = 3
WRONG_KEY = "not-the-right-key-7c1e"
GIVING_UP = "giving up the one-shot run"
EXIT_WITHIN_SECONDS = 240.0


async def undisturbed(sandbox_factory: SandboxFactory, tmp_path: Path, **config: Any) -> Any:
    """ThreatStream's contents after a run that meets no refusal, on the same data."""
    async with sandbox_factory(**config) as server:
        run = await run_all_in_one(values_for(server, tmp_path / "undisturbed.json", DIRECT))
        assert run.code == 0
        return threatstream_contents(server)


def gave_up(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if GIVING_UP in record.getMessage()]


async def test_threatstream_refusing_the_key_ends_the_run_with_exit_3_and_the_next_run_delivers_everything(
    sandbox_factory: SandboxFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"indicators": INDICATORS, "seed": SEED, "anchor": hour_now()}
    reference = await undisturbed(sandbox_factory, tmp_path, **config)
    async with sandbox_factory(**config) as server:
        right = values_for(server, tmp_path / "checkpoint.json", DIRECT, once_refused_seconds=REFUSED_SECONDS)
        refused = {**right, "threatstream_api_key": WRONG_KEY}
        code = await asyncio.wait_for(
            run_pipeline(bus=BusKind.MEMORY, once=True, since=None, values=refused), EXIT_WITHIN_SECONDS
        )
        assert code == EXIT_DEPENDENCY_REFUSED
        [line] = gave_up(caplog)
        assert "TIBRIDGE_THREATSTREAM_API_KEY" in line
        assert WRONG_KEY not in caplog.text
        assert threatstream_contents(server) == {}, "ThreatStream refused everything"

        again = await run_all_in_one(right)
        assert again.code == 0
        assert again.dead_letters == []
        assert contents_problems(threatstream_contents(server), reference) == []


async def test_graph_refusing_the_token_ends_the_run_with_exit_3_and_the_next_run_delivers_everything(
    sandbox_factory: SandboxFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"indicators": INDICATORS, "seed": SEED, "anchor": hour_now()}
    reference = await undisturbed(sandbox_factory, tmp_path, **config)
    async with sandbox_factory(**config, graph_refusal="forbidden") as server:
        values = values_for(server, tmp_path / "checkpoint.json", DIRECT, once_refused_seconds=REFUSED_SECONDS)
        code = await asyncio.wait_for(
            run_pipeline(bus=BusKind.MEMORY, once=True, since=None, values=values), EXIT_WITHIN_SECONDS
        )
        assert code == EXIT_DEPENDENCY_REFUSED
        [line] = gave_up(caplog)
        assert "indicators/scorer is paused" in line

        # The tenant's admin grants the permission: Graph answers again.
        server.state.config = server.config.model_copy(update={"graph_refusal": None})
        again = await run_all_in_one(values)
        assert again.code == 0
        assert again.dead_letters == []
        assert contents_problems(threatstream_contents(server), reference) == []


async def test_the_cli_over_service_bus_exits_3_and_the_messages_wait_for_the_next_run(
    sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble, tmp_path: Path
) -> None:
    config = {"indicators": INDICATORS, "seed": SEED, "anchor": hour_now()}
    reference = await undisturbed(sandbox_factory, tmp_path, **config)
    async with sandbox_factory(**config) as server:
        right = values_for(
            server,
            tmp_path / "checkpoint.json",
            DIRECT,
            once_refused_seconds=REFUSED_SECONDS,
            servicebus_connection_string=sb_double.connection_string,
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tibridge.cli",
            "run",
            "--once",
            "--bus",
            "servicebus",
            cwd=ROOT,
            env=environment({**right, "threatstream_api_key": WRONG_KEY}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), EXIT_WITHIN_SECONDS)
        output = (stdout + stderr).decode()
        assert process.returncode == EXIT_DEPENDENCY_REFUSED, output[-3000:]
        assert GIVING_UP in output
        assert WRONG_KEY not in output
        assert sb_double.depth("scored", "publisher") > 0, "what was not delivered waits on the subscription"

        code = await run_pipeline(bus=BusKind.SERVICEBUS, once=True, since=None, values=right)
        assert code == 0
        assert contents_problems(threatstream_contents(server), reference) == []
        assert sb_double.depth("scored", "publisher", dead_letter=True) == 0
