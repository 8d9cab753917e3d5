"""`tibridge collector --since … [--plan] [--yes]` against the sandbox's Log Analytics: the plan's rows per day
are the table's, a backfill past its budget is refused before anything is read, and a confirmed one runs with
progress lines in its log (stderr is no terminal here)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from tests.fixtures.sandbox import SandboxFactory
from tests.sbdouble.server import ServiceBusDouble
from tibridge.cli.backfill import backfill
from tibridge.collector.kql import HASH_KEY_PREFIX, SUPPORTED_OBSERVABLE_KEYS
from tibridge.common.runtime import EXIT_BAD_SETTINGS, EXIT_OK
from tibridge.common.sentinel import MDTI_SOURCE_SYSTEMS
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox import SandboxServer

SINCE = "P15D"
_DAY_LINE = re.compile(r"^  (\d{4}-\d\d-\d\d)\s+([\d,]+)$")
_SCORABLE_KEYS = {
    "ipv4-addr:value",
    "ipv6-addr:value",
    "network-traffic:src_ref.value",
    "network-traffic:dst_ref.value",
    "domain-name:value",
}


def _anchor() -> datetime:
    # Data ending an hour ago lies wholly inside the backfill's span (now - 15 days → now - the settle delay).
    return datetime.now(UTC) - timedelta(hours=1)


def _read_by_collector(key: str, source_system: str) -> bool:
    exact = set(SUPPORTED_OBSERVABLE_KEYS) - {HASH_KEY_PREFIX}
    return source_system in MDTI_SOURCE_SYSTEMS and (not key or key in exact or key.lower().startswith(HASH_KEY_PREFIX))


def _expected_days(sandbox: SandboxServer, *, scorable: bool = False) -> dict[str, int]:
    days: Counter[str] = Counter()
    for row in sandbox.dataset.rows:
        if not _read_by_collector(row.observable_key, row.source_system):
            continue
        if scorable and row.observable_key and row.observable_key not in _SCORABLE_KEYS:
            continue
        days[f"{row.time_generated:%Y-%m-%d}"] += 1
    return dict(days)


def _environment(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    for name in [name for name in os.environ if name.startswith("TIBRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in {**sandbox.env(), **settings}.items():
        monkeypatch.setenv(name, value)


async def test_the_plan_counts_each_days_rows_as_the_table_holds_them(
    sandbox_factory: SandboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sandbox_factory(indicators=800, seed=11, anchor=_anchor(), days=14) as sandbox:
        _environment(sandbox, monkeypatch)
        out = io.StringIO()
        code = await backfill(
            since=SINCE, once=True, plan_only=True, yes=False, console=Console(file=out, width=400, soft_wrap=True)
        )
        stats = sandbox.stats()["loganalytics"]
        expected, scorable = _expected_days(sandbox), _expected_days(sandbox, scorable=True)
    lines = out.getvalue().splitlines()
    assert code == EXIT_OK
    days = {match[1]: int(match[2].replace(",", "")) for line in lines if (match := _DAY_LINE.match(line))}
    assert days == expected
    total = sum(expected.values())
    assert lines[0].endswith(f": {total:,} rows in Log Analytics")
    graph = next(line for line in lines if line.startswith("Graph: "))
    assert graph.startswith(f"Graph: at most {sum(scorable.values()):,} lookups (one per IP or domain row)")
    assert any(line.startswith("ThreatStream: at most ") for line in lines)
    assert lines[-1] == ("budget: TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS = 1,000,000 rows; this backfill is within it")
    # Two count queries (every row, and the IP and domain rows), nothing read.
    assert (stats["queries"], stats["count_queries"]) == (2, 2)


async def test_a_backfill_past_its_budget_is_refused_in_one_sentence_before_anything_is_read(
    sandbox_factory: SandboxFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with sandbox_factory(indicators=300, seed=12, anchor=_anchor(), days=14) as sandbox:
        total = sum(_expected_days(sandbox).values())
        _environment(sandbox, monkeypatch, TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS=str(total - 1))
        code = await backfill(since=SINCE, once=True, plan_only=False, yes=False, console=Console(file=io.StringIO()))
        stats = sandbox.stats()["loganalytics"]
    assert code == EXIT_BAD_SETTINGS
    [error] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert re.fullmatch(
        rf"error: the backfill \S+ \S+ → \S+ \S+ UTC holds {total:,} rows, more than "
        rf"TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS \({total - 1:,}\); run it anyway with --yes \(or "
        r"TIBRIDGE_COLLECTOR_BACKFILL_CONFIRMED=true\), raise the budget, or backfill a shorter span",
        error,
    )
    assert stats["queries"] == stats["count_queries"]


async def test_a_confirmed_backfill_runs_and_logs_its_progress_where_no_terminal_shows_a_bar(
    sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble, tmp_path: Path
) -> None:
    async with sandbox_factory(indicators=600, seed=13, anchor=_anchor(), days=14) as sandbox:
        total = sum(_expected_days(sandbox).values())
        environment = {name: value for name, value in os.environ.items() if not name.startswith("TIBRIDGE_")}
        environment |= sandbox.env() | {
            "TIBRIDGE_SERVICEBUS_CONNECTION_STRING": sb_double.connection_string,
            "TIBRIDGE_HEALTH_PORT": "0",
            "TIBRIDGE_CHECKPOINT_PATH": str(tmp_path / "checkpoint.json"),
            "TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS": str(total - 1),
            "TIBRIDGE_COLLECTOR_ROWS_PER_QUERY": "150",
            "TIBRIDGE_COLLECTOR_PROGRESS_INTERVAL": "PT0S",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tibridge.cli",
            "collector",
            "--once",
            "--since",
            SINCE,
            "--yes",
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert stdout.decode().splitlines()[0].endswith(f": {total:,} rows in Log Analytics")
    messages = [json.loads(line)["message"] for line in stderr.decode().splitlines() if line.startswith("{")]
    progress = [m for m in messages if re.match(r"backfill \d+%: ", m)]
    assert len(progress) >= 3, messages
    shares = [int(re.match(r"backfill (\d+)%", m)[1]) for m in progress]  # type: ignore[index]
    assert shares == sorted(shares)
    assert shares[-1] == 100
    assert all(re.search(rf"of {total:,} rows, published up to \S+, ETA \d+:\d\d:\d\d$", m) for m in progress)
    assert any(m.startswith(f"backfill of {total:,} rows from ") for m in messages)
    assert any(m.startswith(f"backfill done: {total:,} rows in ") for m in messages)
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) > 0
