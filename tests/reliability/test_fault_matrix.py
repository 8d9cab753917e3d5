"""Issue 13.3: the pipeline against the sandbox with faults on its APIs — everything expected is delivered once.

Each cell puts faults on one API (or a mix on every API) at rates up to 20 %: 429 with Retry-After, 500, 503,
hangs past the client's timeout, malformed bodies, dropped connections, and a rate ceiling below ours. The
pipeline runs all-in-one (`tibridge run --once`, in-memory bus) and as three processes over the wire-level
Service Bus double. Every run must end with every expected observable active exactly once in ThreatStream,
no duplicate, no request inside a Retry-After window, nothing unsettled, and the dead-letter queues holding
exactly the designed poison (ThreatStream's whitelist and refused values) with ThreatStream's reason.

Fast size (`make test`): one cell mixing every fault on every API (Log Analytics hangs left out: each costs the
collector's 25 s transport timeout), all-in-one in direct mode and three processes in approval mode. Full size
(`make reliability`): every fault on every API at 20 %, both shapes, plus the mixed cell in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.reliability.figures import Figure, Figures
from tests.reliability.pipeline import (
    APPROVAL,
    DIRECT,
    HANG_SECONDS,
    MODES,
    Mode,
    Run,
    ThreeProcesses,
    add_poison,
    expected_for,
    judge,
    run_all_in_one,
    values_for,
)
from tests.reliability.sizes import Size, current_size
from tests.sbdouble import ServiceBusDouble
from tibridge.sandbox import ExpectedOutcome, SandboxServer

pytestmark = pytest.mark.usefixtures("restored_logging")

RATE = 0.2
POISON = 3
SEED = 13
# Below what tibridge sends by default (Graph 50 lookups/s, ThreatStream 5 requests/s), so the ceiling binds.
CEILINGS = {"graph": 20.0, "threatstream": 2.0, "loganalytics": 2.0}
THREE_PROCESS_SECONDS = 600.0


def single_fault(api: str, fault: str) -> dict[str, dict[str, Any]]:
    spec: dict[str, Any] = {
        "429": {"p429": RATE, "retry_after_seconds": 1},
        "500": {"p500": RATE},
        "503": {"p503": RATE},
        "hang": {"p_hang": RATE, "hang_seconds": HANG_SECONDS[api]},
        "malformed": {"p_malformed": RATE},
        "drop": {"p_drop": RATE},
        "ceiling": {"rate_ceiling": CEILINGS[api]},
    }[fault]
    return {api: spec}


def mixed(*, loganalytics_hangs: bool) -> dict[str, dict[str, Any]]:
    """Every fault on every API at once, 20 % in all per API."""
    faults: dict[str, dict[str, Any]] = {}
    for api in ("loganalytics", "graph", "threatstream"):
        hang = 0.02 if api != "loganalytics" or loganalytics_hangs else 0.0
        faults[api] = {
            "p429": 0.05,
            "retry_after_seconds": 1,
            "p500": 0.03,
            "p503": 0.03,
            "p_malformed": 0.03,
            "p_drop": round(0.06 - hang, 2),
            "p_hang": hang,
            "hang_seconds": HANG_SECONDS[api],
        }
    return faults


@dataclass(frozen=True)
class Cell:
    name: str
    faults: dict[str, dict[str, Any]]
    mode: Mode = DIRECT

    @property
    def id(self) -> str:
        return f"{self.name}-{self.mode.name}"


def cells(size: Size, *, three_processes: bool) -> list[Cell]:
    if not size.every_fault_cell:
        return [Cell("every-fault-mixed", mixed(loganalytics_hangs=False), APPROVAL if three_processes else DIRECT)]
    singles = [
        Cell(f"{api}-{fault}", single_fault(api, fault))
        for api in ("loganalytics", "graph", "threatstream")
        for fault in ("429", "500", "503", "hang", "malformed", "drop", "ceiling")
    ]
    return singles + [Cell("every-fault-mixed", mixed(loganalytics_hangs=True), mode) for mode in MODES]


SIZE = current_size()


def poisoned(server: SandboxServer, cell: Cell) -> ExpectedOutcome:
    """The expected outcome with a few designed poison values (refused by ThreatStream with a 400)."""
    return add_poison(server, expected_for(server, cell.mode), POISON, SEED)


def record(
    figures: Figures, section: str, cell: Cell, server: SandboxServer, expected: ExpectedOutcome, run: Run
) -> list[str]:
    verdict = judge(server, expected, run)
    figures.record(
        section,
        Figure(
            cell.id,
            faults_injected=verdict.faults_injected,
            kills=run.kills,
            delivered=verdict.delivered,
            expected=verdict.expected,
            duplicates=verdict.duplicates,
            inside_retry_after=verdict.inside_retry_after,
            dead_lettered=verdict.dead_lettered,
            passed=not verdict.problems,
            note="; ".join(verdict.problems)[:300],
        ),
    )
    assert verdict.faults_injected > 0, "the cell was meant to inject faults"
    return verdict.problems


@pytest.mark.parametrize("cell", cells(SIZE, three_processes=False), ids=lambda cell: cell.id)
async def test_all_in_one_delivers_everything_once_through_faults(
    cell: Cell, sandbox_factory: SandboxFactory, tmp_path: Path, size: Size, figures: Figures
) -> None:
    async with sandbox_factory(indicators=size.fault_indicators, seed=SEED, anchor=None, faults=cell.faults) as server:
        expected = poisoned(server, cell)
        run = await run_all_in_one(values_for(server, tmp_path / "checkpoint.json", cell.mode))
        problems = record(figures, "Fault matrix — all-in-one (in-memory bus)", cell, server, expected, run)
    assert problems == []


@pytest.mark.parametrize("cell", cells(SIZE, three_processes=True), ids=lambda cell: cell.id)
async def test_three_processes_deliver_everything_once_through_faults(
    cell: Cell,
    sandbox_factory: SandboxFactory,
    sb_double: ServiceBusDouble,
    tmp_path: Path,
    size: Size,
    figures: Figures,
) -> None:
    async with sandbox_factory(indicators=size.fault_indicators, seed=SEED, anchor=None, faults=cell.faults) as server:
        expected = poisoned(server, cell)
        values = values_for(server, tmp_path / "checkpoint.json", cell.mode)
        async with ThreeProcesses(sb_double, values, tmp_path) as processes:
            await processes.until_done(within=THREE_PROCESS_SECONDS)
            codes = await processes.stop()
            run = processes.run(max(codes.values()))
        section = "Fault matrix — three processes over the Service Bus double"
        problems = record(figures, section, cell, server, expected, run)
    assert problems == []
