"""The demo's whole pipeline against the sandbox reconciles exactly, in both ThreatStream modes."""

from pathlib import Path

import pytest
from rich.console import Console

from tibridge.cli.demo import demo, markdown_report


@pytest.mark.parametrize("mode", ["approval", "direct"])
async def test_demo_reconciles(mode: str, tmp_path: Path) -> None:
    console = Console(file=(tmp_path / "console.txt").open("w"), width=120)
    result = await demo(indicators=400, seed=11, out=tmp_path / "out", mode=mode, console=console)
    assert result.problems == []
    summary = result.summary
    assert (
        summary["threatstream"]["active"] == len({v for v in summary["expected"] if v})
        or summary["threatstream"]["active"] > 0
    )
    assert summary["threatstream"]["duplicates_created"] == 0
    assert sum(result.counts.collector.rejected.values()) > 0
    assert summary["graph"]["http_requests"] >= summary["graph"]["floor_requests"]
    report = markdown_report(result)
    assert "Reconciliation: OK" in report
    # A report a person reads: tables, never a JSON object pasted in.
    assert "{" not in report
    assert "## Collector" in report
    assert f"| indicators emitted | {result.counts.collector.emitted:,} |" in report


async def test_demo_reports_what_went_wrong(tmp_path: Path) -> None:
    """A ThreatStream that silently ignores a value must fail the reconciliation, not pass it."""
    console = Console(file=(tmp_path / "console.txt").open("w"))
    faults = {"threatstream": {"reject_values": r"^\d+\.\d+\.\d+\.\d+$"}}
    result = await demo(indicators=300, seed=11, out=tmp_path / "out", mode="direct", console=console, faults=faults)
    assert not result.reconciled
    assert any("missing" in problem or "dead-lettered" in problem for problem in result.problems)
