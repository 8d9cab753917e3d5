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
    threatstream = summary["threatstream"]
    assert threatstream["active"] > 0
    assert (threatstream["duplicates_created"], threatstream["created_inactive"]) == (0, 0)
    assert threatstream["foreign"]["changed"] == []
    publisher = result.counts.publisher
    if mode == "approval":
        # Every import session was followed to its end; none holds an expiry.
        assert publisher.sessions_opened == threatstream["import_sessions"] > 0
        assert sum(publisher.sessions_by_status.values()) == publisher.sessions_opened
        assert publisher.session_observables_accepted == threatstream["session_observables_accepted"]
        assert threatstream["pending_approval"] == 0
    else:
        assert publisher.sessions_opened == threatstream["import_sessions"] == 0
    assert sum(result.counts.collector.rejected.values()) > 0
    assert summary["graph"]["http_requests"] >= summary["graph"]["floor_requests"]
    report = markdown_report(result)
    assert "Reconciliation: OK" in report
    # A report a person reads: tables, never a JSON object pasted in.
    assert "{" not in report
    assert "## Collector" in report
    assert f"| indicators emitted | {result.counts.collector.emitted:,} |" in report
    assert f"| import sessions opened | {publisher.sessions_opened:,} |" in report


async def test_demo_reports_what_went_wrong(tmp_path: Path) -> None:
    """A ThreatStream that silently ignores a value must fail the reconciliation, not pass it."""
    console = Console(file=(tmp_path / "console.txt").open("w"))
    faults = {"threatstream": {"reject_values": r"^\d+\.\d+\.\d+\.\d+$"}}
    result = await demo(indicators=300, seed=11, out=tmp_path / "out", mode="direct", console=console, faults=faults)
    assert not result.reconciled
    assert any("missing" in problem for problem in result.problems)
    assert any("dead-lettered" in problem for problem in result.problems)
