"""`tibridge demo`: the sandbox with seeded data, the whole pipeline in one process, and a reconciliation.

The demo is honest about what happened: the summary comes from the services' own counts and the sandbox's
request statistics, and the reconciliation compares what ThreatStream holds with what the seeded data says a
correct pipeline must leave there. Any difference is listed and makes the command exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tibridge.cli.commands import run_pipeline
from tibridge.cli.pipeline import PipelineSettings, load_pipeline_settings
from tibridge.common.contracts import SCORABLE_TYPES
from tibridge.common.runtime import Service
from tibridge.common.settings import from_environment
from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.expected import ExpectedOutcome, Outcome
from tibridge.sandbox.server import SandboxServer

# Mild, realistic trouble: a few Graph items throttled, some latency on every API.
DEMO_FAULTS: dict[str, dict[str, Any]] = {
    "graph": {"p429": 0.005, "retry_after_seconds": 1, "latency_ms": 15, "jitter_ms": 10},
    "threatstream": {"latency_ms": 40, "jitter_ms": 20},
    "loganalytics": {"latency_ms": 20, "jitter_ms": 10},
}
_REFRESH_SECONDS = 0.2


@dataclass
class DemoResult:
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def reconciled(self) -> bool:
        return not self.problems


def _demo_settings(sandbox: SandboxServer, out: Path, mode: str) -> dict[str, Any]:
    overrides: dict[str, Any] = from_environment(sandbox.env())
    overrides.update(
        {
            "bus": "memory",
            "health_port": 0,
            "log_level": "ERROR",
            "checkpoint_store": "file",
            "checkpoint_path": str(out / "checkpoint.json"),
            "threatstream_mode": mode,
        }
    )
    return overrides


async def run_demo(*, indicators: int, seed: int, out: Path, mode: str, console: Console | None = None) -> int:
    console = console or Console()
    result = await demo(indicators=indicators, seed=seed, out=out, mode=mode, console=console)
    render(result, console)
    write_reports(result, out)
    console.print(f"Wrote {out / 'summary.json'} and {out / 'report.md'}.")
    return 0 if result.reconciled else 1


async def demo(
    *, indicators: int, seed: int, out: Path, mode: str, console: Console, faults: dict[str, Any] | None = None
) -> DemoResult:
    await asyncio.to_thread(_fresh_directory, out)
    config = SandboxConfig(indicators=indicators, seed=seed, faults=DEMO_FAULTS if faults is None else faults)
    async with SandboxServer(config) as sandbox:
        console.print(
            f"Sandbox on {sandbox.base_url}: {len(sandbox.dataset.rows):,} rows for {indicators:,} indicators "
            f"(seed {seed}); ThreatStream mode {mode}."
        )
        overrides = _demo_settings(sandbox, out, mode)
        settings = load_pipeline_settings(overrides)
        services: dict[str, Service] = {}
        started = time.monotonic()
        pipeline = asyncio.create_task(
            run_pipeline(bus="memory", once=True, since=None, overrides=overrides, on_built=services.update)
        )
        await _show_progress(pipeline, services, console)
        code = await pipeline
        elapsed = time.monotonic() - started
        approved = await _approve_pending_sessions(sandbox) if mode == "approval" else 0
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as control:
            stats = (await control.get("/_sandbox/stats")).json()
            objects = (await control.get("/_sandbox/threatstream/objects")).json()["objects"]
        expected = _expected(sandbox, settings)
    counts = {stage: service.counts() for stage, service in services.items()}
    summary = _summary(counts, stats, expected, elapsed, approved, indicators, seed, mode)
    problems = reconcile(expected.active, expected.not_active, objects, stats, counts["publisher"])
    if code != 0:
        problems.insert(0, f"the pipeline exited with code {code}")
    summary["reconciliation"] = {"ok": not problems, "problems": problems}
    return DemoResult(summary, problems)


def _fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _expected(sandbox: SandboxServer, settings: PipelineSettings) -> ExpectedOutcome:
    scorer = settings.scorer
    return sandbox.expected(
        threshold=scorer.score_threshold,
        forward_unscorable=str(scorer.unscorable_policy) == "forward",
        allowed_classifications=scorer.allowed_classifications or None,
        drop_non_global=settings.collector.collector_reject_non_global_ips,
    )


async def _approve_pending_sessions(sandbox: SandboxServer) -> int:
    """What an analyst does in ThreatStream's UI: approve every session that waits (through the real API)."""
    pending = [session.id for session in sandbox.state.intel.sessions.values() if session.pending]
    endpoints = sandbox.endpoints
    headers = {
        "Authorization": f"apikey {sandbox.config.threatstream_username}:"
        f"{sandbox.config.threatstream_api_key.get_secret_value()}"
    }
    async with httpx.AsyncClient(base_url=endpoints.threatstream, headers=headers, timeout=30) as client:
        for session_id in pending:
            response = await client.patch(f"/v1/importsession/{session_id}/approve_all/")
            response.raise_for_status()
    return len(pending)


async def _show_progress(pipeline: asyncio.Task[int], services: dict[str, Service], console: Console) -> None:
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        collect = progress.add_task("collect", total=None)
        score = progress.add_task("score", total=None)
        publish = progress.add_task("publish", total=None)
        while True:
            if services:
                collector = services["collector"].counts()
                scorer = services["scorer"].counts()
                publisher = services["publisher"].counts()
                emitted = int(collector.get("emitted", 0))
                scored = sum(scorer.get("verdicts", {}).values())
                to_publish = sum(n for key, n in scorer.get("verdicts", {}).items() if not key.startswith("drop/"))
                progress.update(collect, completed=emitted, total=emitted if pipeline.done() else None)
                progress.update(score, completed=scored, total=max(emitted, scored))
                progress.update(publish, completed=publisher.get("completed", 0), total=max(to_publish, 1))
            if pipeline.done():
                return
            await asyncio.sleep(_REFRESH_SECONDS)


def reconcile(
    expected_active: Set[str],
    expected_not_active: Set[str],
    objects: list[dict[str, Any]],
    stats: dict[str, Any],
    publisher_counts: dict[str, Any] | None = None,
) -> list[str]:
    """Every way in which ThreatStream's contents and the traffic differ from what a correct run leaves.

    `objects` and `stats` are the sandbox's `/_sandbox/threatstream/objects` and `/_sandbox/stats` answers.
    """
    problems: list[str] = []
    active = Counter(obj["value"] for obj in objects if obj["status"] == "active")
    missing = sorted(expected_active - active.keys())
    unexpected = sorted(active.keys() - expected_active)
    doubled = sorted(value for value, n in active.items() if n > 1)
    wrongly_active = sorted(expected_not_active & active.keys())
    for label, values in (
        ("expected active in ThreatStream but missing", missing),
        ("active in ThreatStream but not expected", unexpected),
        ("active more than once in ThreatStream", doubled),
        ("should not be active but is", wrongly_active),
    ):
        if values:
            problems.append(f"{len(values)} value(s) {label}: {', '.join(values[:5])}{' …' if len(values) > 5 else ''}")
    duplicates = stats["threatstream"]["duplicates_created"]
    if duplicates:
        problems.append(f"ThreatStream reports {duplicates} duplicate creation(s)")
    if stats["threatstream"]["pending_approval"]:
        problems.append(f"{stats['threatstream']['pending_approval']} observable(s) still wait for approval")
    for api, n in stats["inside_retry_after"].items():
        if n:
            problems.append(f"{n} {api} request(s) arrived inside an announced Retry-After window")
    if publisher_counts is not None:
        if dead := publisher_counts.get("dead_lettered", 0):
            problems.append(f"the publisher dead-lettered {dead} message(s)")
        if held := publisher_counts.get("held", 0):
            problems.append(f"the publisher still holds {held} message(s)")
    return problems


def _summary(
    counts: dict[str, Any],
    stats: dict[str, Any],
    expected: ExpectedOutcome,
    elapsed: float,
    approved: int,
    indicators: int,
    seed: int,
    mode: str,
) -> dict[str, Any]:
    graph = stats["graph"]
    scorable = {
        e.canonical_value
        for e in expected.indicators.values()
        if e.outcome in (Outcome.PUBLISH, Outcome.DROP) and e.observable_type in SCORABLE_TYPES
    }
    return {
        "run": {
            "indicators": indicators,
            "seed": seed,
            "threatstream_mode": mode,
            "elapsed_seconds": round(elapsed, 2),
        },
        "collector": counts["collector"],
        "scorer": counts["scorer"],
        "publisher": counts["publisher"],
        "graph": {
            "http_requests": graph["http_requests"],
            "lookups": graph["lookups"],
            "unique_scorable_observables": len(scorable),
            "floor_requests": math.ceil(len(scorable) / 20),
            "items_429": graph["items_429"],
            "requests_by_status": stats["requests"].get("graph", {}),
        },
        "threatstream": {**stats["threatstream"], "sessions_approved_by_demo": approved},
        "loganalytics": stats["loganalytics"],
        "inside_retry_after": stats["inside_retry_after"],
        "expected": {str(k): v for k, v in expected.counts.items()},
        "expected_reasons": {str(k): dict(v) for k, v in expected.reasons.items() if v},
        "observable_types": dict(
            Counter(str(e.observable_type) for e in expected.indicators.values() if e.observable_type is not None)
        ),
    }


def render(result: DemoResult, console: Console) -> None:
    s = result.summary
    table = Table(title="tibridge demo", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("detail")
    collector, scorer, publisher = s["collector"], s["scorer"], s["publisher"]
    table.add_row(
        "rows read", f"{collector['rows_read']:,}", f"{collector['windows']} windows, {collector['splits']} splits"
    )
    table.add_row("indicators emitted", f"{collector['emitted']:,}", _pairs(collector["inactive"], "flagged inactive"))
    table.add_row("rejected", f"{sum(collector['rejected'].values()):,}", _pairs(collector["rejected"]))
    table.add_row(
        "scored", f"{sum(scorer['verdicts'].values()):,}", _pairs(scorer["classifications"], "by classification")
    )
    for verdict in ("publish", "drop", "expire"):
        reasons = {k.partition("/")[2]: v for k, v in scorer["verdicts"].items() if k.partition("/")[0] == verdict}
        table.add_row(f"  {verdict}", f"{sum(reasons.values()):,}", _pairs(reasons))
    graph = s["graph"]
    table.add_row(
        "Graph requests",
        f"{graph['http_requests']:,}",
        f"{graph['lookups']:,} lookups for {graph['unique_scorable_observables']:,} unique observables "
        f"(floor {graph['floor_requests']:,}); cache hits {scorer['cache']['hits']:,}",
    )
    table.add_row(
        "429s honoured", f"{scorer['graph']['throttled']:,}", f"inside Retry-After: {s['inside_retry_after']}"
    )
    ts = s["threatstream"]
    table.add_row(
        "ThreatStream requests",
        f"{publisher['requests']:,}",
        f"{publisher['batches']} batches (largest {publisher['largest_batch']}), "
        f"{ts['import_sessions']} import sessions",
    )
    table.add_row(
        "ThreatStream holds",
        f"{ts['objects']:,}",
        f"{ts['active']:,} active, {ts['inactive']:,} inactive; created {ts['created']:,}, updated {ts['updated']:,}, "
        f"duplicates {ts['duplicates_created']}",
    )
    table.add_row("elapsed", f"{s['run']['elapsed_seconds']:.1f}s", "")
    console.print(table)
    if result.reconciled:
        console.print(
            f"[bold green]Reconciled:[/] ThreatStream holds exactly the {s['threatstream']['active']:,} "
            f"expected active observables (from {s['expected'].get('publish', 0):,} indicators), nothing duplicated, "
            "no request inside a Retry-After window."
        )
    else:
        console.print("[bold red]NOT reconciled:[/]")
        for problem in result.problems:
            console.print(f"  - {problem}")


def _pairs(counts: dict[str, Any], prefix: str = "") -> str:
    text = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{prefix}: {text}" if prefix and text else text


def write_reports(result: DemoResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
    with contextlib.suppress(OSError):
        (out / "report.md").write_text(markdown_report(result))


def markdown_report(result: DemoResult) -> str:
    s = result.summary
    lines = [
        "# tibridge demo report",
        "",
        f"{s['run']['indicators']:,} indicators (seed {s['run']['seed']}), ThreatStream mode "
        f"`{s['run']['threatstream_mode']}`, {s['run']['elapsed_seconds']:.1f} s.",
        "",
        f"**Reconciliation: {'OK' if result.reconciled else 'FAILED'}**",
        "",
        *[f"- {p}" for p in result.problems],
        "",
        "| stage | counts |",
        "|---|---|",
        *[f"| {stage} | `{json.dumps(s[stage], default=str)}` |" for stage in ("collector", "scorer", "publisher")],
        "",
        "| API | numbers |",
        "|---|---|",
        f"| Graph | `{json.dumps(s['graph'])}` |",
        f"| ThreatStream | `{json.dumps(s['threatstream'])}` |",
        f"| Log Analytics | `{json.dumps(s['loganalytics'])}` |",
        "",
        f"Expected outcome per indicator: `{json.dumps(s['expected'])}`;",
        f"reasons `{json.dumps(s['expected_reasons'])}`.",
        "",
    ]
    return "\n".join(lines)
