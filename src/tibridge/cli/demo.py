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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tibridge.cli.commands import run_pipeline
from tibridge.cli.pipeline import PipelineSettings, load_pipeline_settings
from tibridge.collector.settings import CollectorSettings
from tibridge.collector.worker import CollectorCounts
from tibridge.common.contracts import SCORABLE_TYPES
from tibridge.common.runtime import Service, ServiceName
from tibridge.common.settings import BusKind, from_environment
from tibridge.publisher.worker import REJECTED_REASON, PublisherCounts
from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.expected import ExpectedOutcome, Outcome
from tibridge.sandbox.server import SandboxServer
from tibridge.scorer.handler import ScorerCounts
from tibridge.scorer.settings import ScorerSettings, UnscorableHandling

# Mild, realistic trouble: a few Graph items throttled, some latency on every API.
DEMO_FAULTS: dict[str, dict[str, Any]] = {
    "graph": {"p429": 0.005, "retry_after_seconds": 1, "latency_ms": 15, "jitter_ms": 10},
    "threatstream": {"latency_ms": 40, "jitter_ms": 20},
    "loganalytics": {"latency_ms": 20, "jitter_ms": 10},
}
_REFRESH_SECONDS = 0.2
_ANALYST_POLL_SECONDS = 0.5
_ANALYST_WAIT_SECONDS = 60.0
_GRAPH_BATCH = 20


@dataclass(frozen=True)
class StageCounts:
    """What each service counted, as its package types it."""

    collector: CollectorCounts
    scorer: ScorerCounts
    publisher: PublisherCounts

    @classmethod
    def of(cls, services: Mapping[ServiceName, Service]) -> StageCounts:
        return cls(
            collector=services[ServiceName.COLLECTOR].snapshot(CollectorCounts),
            scorer=services[ServiceName.SCORER].snapshot(ScorerCounts),
            publisher=services[ServiceName.PUBLISHER].snapshot(PublisherCounts),
        )


@dataclass
class DemoResult:
    counts: StageCounts
    # The run, the APIs' side (the sandbox's statistics) and the expected outcome, as summary.json holds them.
    summary: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def reconciled(self) -> bool:
        return not self.problems


def _demo_settings(sandbox: SandboxServer, out: Path, mode: str) -> dict[str, Any]:
    values: dict[str, Any] = from_environment(sandbox.env())
    values.update(
        {
            "health_port": 0,
            "log_level": "ERROR",
            "checkpoint_store": "file",
            "checkpoint_path": str(out / "checkpoint.json"),
            "publisher_mode": mode,
        }
    )
    return values


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
        values = _demo_settings(sandbox, out, mode)
        settings = load_pipeline_settings({"bus": BusKind.MEMORY, **values})
        services: dict[ServiceName, Service] = {}
        started = time.monotonic()
        async with Analyst(sandbox, active=mode == "approval") as analyst:
            pipeline = asyncio.create_task(
                run_pipeline(bus=BusKind.MEMORY, once=True, since=None, values=values, on_built=services.update)
            )
            await _show_progress(pipeline, services, console)
            code = await pipeline
            elapsed = time.monotonic() - started
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30) as control:
            stats = (await control.get("/_sandbox/stats")).json()
        expected = _expected(sandbox, settings)
        threatstream = sandbox.reconcile(expected)
    counts = StageCounts.of(services)
    summary = _summary(counts, stats, expected, elapsed, analyst.approved, indicators, seed, mode)
    problems = reconcile(threatstream, stats, rejected_values=len(expected.rejected), publisher=counts.publisher)
    if code != 0:
        problems.insert(0, f"the pipeline exited with code {code}")
    summary["reconciliation"] = {"ok": not problems, "problems": problems}
    return DemoResult(counts, summary, problems)


def _fresh_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _expected(sandbox: SandboxServer, settings: PipelineSettings) -> ExpectedOutcome:
    scoring = settings.of(ScorerSettings).scorer
    return sandbox.expected(
        threshold=scoring.threshold,
        forward_unscorable=scoring.unscorable is UnscorableHandling.FORWARD,
        allowed_classifications=scoring.allowed_classifications or None,
        drop_non_global=settings.of(CollectorSettings).collector.reject_non_global_ips,
    )


class Analyst:
    """What an analyst does in ThreatStream's UI, through the real API: approves each import session once
    ThreatStream has finished processing it (`done`), while the pipeline runs and once more after it ended."""

    def __init__(self, sandbox: SandboxServer, *, active: bool) -> None:
        self._sandbox = sandbox
        self._active = active
        self._approving: set[int] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        config = sandbox.config
        self._headers = {
            "Authorization": f"apikey {config.threatstream_username}:{config.threatstream_api_key.get_secret_value()}"
        }

    @property
    def approved(self) -> int:
        return len(self._approving)

    async def __aenter__(self) -> Analyst:
        if self._active:
            self._task = asyncio.create_task(self._approve_until_stopped())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is None:
            return
        self._stop.set()
        await self._task
        # Once more after the run, until what it approved has become active (bounded).
        async with self._client() as client:
            for _round in range(int(_ANALYST_WAIT_SECONDS / _ANALYST_POLL_SECONDS)):
                if not await self._approve_waiting(client):
                    return
                await asyncio.sleep(_ANALYST_POLL_SECONDS)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self._sandbox.endpoints.threatstream, headers=self._headers, timeout=30)

    async def _approve_until_stopped(self) -> None:
        async with self._client() as client:
            while not self._stop.is_set():
                await self._approve_waiting(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), _ANALYST_POLL_SECONDS)

    async def _approve_waiting(self, client: httpx.AsyncClient) -> int:
        """Approves the sessions that are done; how many are still on their way (processing or approving)."""
        intel = self._sandbox.state.intel
        unfinished = 0
        for session_id in list(intel.sessions):
            status = str(intel.session(session_id).status)  # as the analyst's list of import sessions shows it
            if status == "done" and session_id not in self._approving:
                (await client.patch(f"/v1/importsession/{session_id}/approve_all/")).raise_for_status()
                self._approving.add(session_id)
                status = "approving"
            if status in ("processing", "approving"):
                unfinished += 1
        return unfinished


async def _show_progress(
    pipeline: asyncio.Task[int], services: Mapping[ServiceName, Service], console: Console
) -> None:
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        collect = progress.add_task("collect", total=None)
        score = progress.add_task("score", total=None)
        publish = progress.add_task("publish", total=None)
        while True:
            if services:
                counts = StageCounts.of(services)
                emitted = counts.collector.emitted
                scored = counts.scorer.verdicts.scored
                progress.update(collect, completed=emitted, total=emitted if pipeline.done() else None)
                progress.update(score, completed=scored, total=max(emitted, scored))
                settled = counts.publisher.completed + counts.publisher.dead_lettered  # both end a message
                progress.update(publish, completed=settled, total=max(counts.scorer.verdicts.forwarded, 1))
            if pipeline.done():
                return
            await asyncio.sleep(_REFRESH_SECONDS)


def reconcile(
    threatstream: Sequence[str],
    stats: Mapping[str, Any],
    *,
    rejected_values: int = 0,
    publisher: PublisherCounts | None = None,
) -> list[str]:
    """Every way in which the run differs from what a correct one leaves.

    `threatstream` is the sandbox's reconciliation of ThreatStream's contents (`/_sandbox/reconcile` or
    `SandboxServer.reconcile()`: missing, doubled or wrongly active values, objects tibridge created without
    publishing them, changed foreign entries, observables waiting for approval…), `stats` its `/_sandbox/stats`;
    `rejected_values` how many published values ThreatStream's whitelist refuses (the publisher must dead-letter
    each with ThreatStream's reason, and nothing else).
    """
    problems = list(threatstream)
    for api, n in stats["inside_retry_after"].items():
        if n:
            problems.append(f"{n} {api} request(s) arrived inside an announced Retry-After window")
    if publisher is not None:
        unexpected = {reason: n for reason, n in publisher.dead_lettered_by_reason.items() if reason != REJECTED_REASON}
        if unexpected:
            problems.append(
                f"the publisher dead-lettered messages for other reasons than a refusal: {_pairs(unexpected)}"
            )
        if publisher.rejected != rejected_values:
            problems.append(
                f"the publisher dead-lettered {publisher.rejected:,} observable(s) ThreatStream refused, where "
                f"{rejected_values:,} published value(s) are on ThreatStream's whitelist"
            )
        if publisher.held:
            problems.append(f"the publisher still holds {publisher.held} message(s)")
    return problems


def _summary(
    counts: StageCounts,
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
        "collector": counts.collector.as_json(),
        "scorer": counts.scorer.as_json(),
        "publisher": counts.publisher.as_json(),
        "graph": {
            "http_requests": graph["http_requests"],
            "lookups": graph["lookups"],
            "unique_scorable_observables": len(scorable),
            "floor_requests": math.ceil(len(scorable) / _GRAPH_BATCH),
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
    collector, scorer, publisher = result.counts.collector, result.counts.scorer, result.counts.publisher
    table = Table(title="tibridge demo", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("detail")
    table.add_row("rows read", f"{collector.rows_read:,}", f"{collector.windows} windows, {collector.splits} splits")
    table.add_row("indicators emitted", f"{collector.emitted:,}", _pairs(collector.inactive, "flagged inactive"))
    table.add_row("rejected", f"{sum(collector.rejected.values()):,}", _pairs(collector.rejected))
    table.add_row("scored", f"{scorer.verdicts.scored:,}", _pairs(scorer.classifications, "by classification"))
    for verdict, reasons in _verdicts(result):
        table.add_row(f"  {verdict}", f"{sum(reasons.values()):,}", _pairs(reasons))
    graph = s["graph"]
    table.add_row(
        "Graph requests",
        f"{graph['http_requests']:,}",
        f"{graph['lookups']:,} lookups for {graph['unique_scorable_observables']:,} unique observables "
        f"(floor {graph['floor_requests']:,}); cache hits {scorer.cache.hits:,}",
    )
    table.add_row(
        "429s honoured", f"{scorer.graph.throttled:,}", f"inside Retry-After: {_pairs(s['inside_retry_after'])}"
    )
    ts = s["threatstream"]
    table.add_row(
        "ThreatStream requests",
        f"{publisher.requests:,}",
        f"{_pairs(publisher.requests_by_operation)}; batches {publisher.batches} (largest {publisher.largest_batch})",
    )
    table.add_row(
        "import sessions",
        f"{publisher.sessions_opened:,}",
        "; ".join(
            part
            for part in (
                f"observables accepted {publisher.session_observables_accepted:,}, rejected "
                f"{publisher.session_observables_rejected:,}",
                _pairs(publisher.sessions_by_status, "final state"),
            )
            if part
        ),
    )
    table.add_row(
        "ThreatStream holds",
        f"{ts['objects']:,}",
        f"{ts['active']:,} active, {ts['inactive']:,} inactive; created {ts['created']:,}, updated {ts['updated']:,}, "
        f"created inactive {ts['created_inactive']}, duplicates {ts['duplicates_created']}",
    )
    foreign = ts["foreign"]
    table.add_row("foreign entries", f"{foreign['seeded']:,}", f"unchanged {foreign['unchanged']:,}")
    if publisher.missing_permissions:
        lacking = ", ".join(publisher.missing_permissions)
        table.add_row("permissions lacking", f"{len(publisher.missing_permissions)}", f"{lacking}: dead-lettered")
    table.add_row("elapsed", f"{s['run']['elapsed_seconds']:.1f}s", "")
    console.print(table)
    console.print(_verdict_line(result))
    for problem in result.problems:
        console.print(f"  - {problem}")


def _verdicts(result: DemoResult) -> list[tuple[str, Mapping[str, int]]]:
    verdicts = result.counts.scorer.verdicts
    return [("publish", verdicts.publish), ("drop", verdicts.drop), ("expire", verdicts.expire)]


def _verdict_line(result: DemoResult) -> str:
    s = result.summary
    if not result.reconciled:
        return "[bold red]NOT reconciled:[/]"
    ts = s["threatstream"]
    return (
        f"[bold green]Reconciled:[/] ThreatStream holds exactly the {ts['active']:,} expected active observables "
        f"(from {s['expected'].get('publish', 0):,} indicators) and nothing tibridge did not publish; every "
        f"observable revoked, deleted or expired upstream is inactive; all {ts['foreign']['seeded']:,} foreign "
        "entries are unchanged; nothing duplicated, no request inside a Retry-After window."
    )


def _pairs(counts: Mapping[str, Any], prefix: str = "") -> str:
    text = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{prefix}: {text}" if prefix and text else text


def write_reports(result: DemoResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
    with contextlib.suppress(OSError):
        (out / "report.md").write_text(markdown_report(result))


# -- the Markdown report: a table per stage, then the APIs' side and what the seeded data expected ------------


def markdown_report(result: DemoResult) -> str:
    s = result.summary
    run = s["run"]
    lines = [
        "# tibridge demo report",
        "",
        f"{run['indicators']:,} indicators (seed {run['seed']}), ThreatStream mode `{run['threatstream_mode']}`, "
        f"{run['elapsed_seconds']:.1f} s.",
        "",
        f"**Reconciliation: {'OK' if result.reconciled else 'FAILED'}**",
        "",
        *[f"- {problem}" for problem in result.problems],
        *([""] if result.problems else []),
        *_section("Collector", ("what", "count"), _collector_rows(result.counts.collector)),
        *_section("Scorer: verdicts", ("verdict", "reason", "indicators"), _verdict_rows(result)),
        *_section("Scorer: lookups", ("what", "count"), _lookup_rows(result)),
        *_section("Publisher", ("what", "count"), _publisher_rows(result.counts.publisher)),
        *_section(
            "The APIs, as the sandbox saw them",
            ("API", "what", "count"),
            _api_rows(s),
            note="What reached the stand-ins, counted on their side of the wire.",
        ),
        *_section(
            "What the seeded data expects",
            ("outcome", "reason", "indicators"),
            _expected_rows(s),
            note="Per indicator, by its newest row; the stages above count messages, one per revision they read.",
        ),
    ]
    return "\n".join(lines)


Row = tuple[str, ...]


def _section(title: str, header: tuple[str, ...], rows: Iterable[Row], note: str = "") -> list[str]:
    numeric = ["---:" if column in ("count", "indicators") else "---" for column in header]
    return [
        f"## {title}",
        "",
        *([note, ""] if note else []),
        "| " + " | ".join(header) + " |",
        "|" + "|".join(numeric) + "|",
        *["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows],
        "",
    ]


def _n(value: float) -> str:
    return f"{value:,}"


def _by(label: str, counts: Mapping[str, int]) -> list[Row]:
    return [(f"{label}: {key}", _n(n)) for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def _collector_rows(counts: CollectorCounts) -> list[Row]:
    return [
        ("passes (failed)", f"{counts.passes} ({counts.failed_passes})"),
        ("windows read", _n(counts.windows)),
        ("windows halved", _n(counts.splits)),
        ("rows read", _n(counts.rows_read)),
        ("indicators emitted", _n(counts.emitted)),
        *_by("emitted flagged inactive", counts.inactive),
        ("rows rejected", _n(sum(counts.rejected.values()))),
        *_by("rejected", counts.rejected),
        ("watermark", counts.watermark.isoformat() if counts.watermark else "—"),
    ]


def _verdict_rows(result: DemoResult) -> list[Row]:
    rows: list[Row] = []
    for verdict, reasons in _verdicts(result):
        rows += [(verdict, reason, _n(n)) for reason, n in reasons.items()]
    return rows


def _lookup_rows(result: DemoResult) -> list[Row]:
    scorer, graph = result.counts.scorer, result.summary["graph"]
    return [
        *_by("reputation classification", scorer.classifications),
        ("cache hits", _n(scorer.cache.hits)),
        ("cache misses (lookups sent)", _n(scorer.cache.misses)),
        ("lookups shared with one under way", _n(scorer.cache.shared)),
        ("Graph $batch requests", _n(scorer.graph.batch_requests)),
        ("lookups in them", _n(scorer.graph.items)),
        (f"fewest requests possible (unique observables / {_GRAPH_BATCH})", _n(graph["floor_requests"])),
        ("429s honoured", _n(scorer.graph.throttled)),
        ("retries", _n(scorer.graph.retries)),
        ("messages completed", _n(scorer.settled.completed)),
        ("messages given back for later", _n(scorer.settled.abandoned)),
        ("messages dead-lettered", _n(scorer.settled.dead_lettered)),
        ("settled after their lock had lapsed (delivered again)", _n(scorer.settled.lock_lost)),
    ]


def _publisher_rows(counts: PublisherCounts) -> list[Row]:
    return [
        ("batches", _n(counts.batches)),
        ("mean batch size", f"{counts.mean_batch_size:,.1f}"),
        ("largest batch", _n(counts.largest_batch)),
        ("messages coalesced with another about the same observable", _n(counts.coalesced)),
        ("ThreatStream requests (retries)", f"{counts.requests:,} ({counts.retries:,})"),
        *_by("requests", counts.requests_by_operation),
        ("requests from splitting rejected ones", _n(counts.split_requests)),
        ("observables published (upserts, import sessions)", _n(counts.published)),
        ("objects of ours updated by id", _n(counts.updated)),
        ("objects of ours deactivated by id", _n(counts.deactivated)),
        *_by("needed no request", counts.skipped),
        ("import sessions opened", _n(counts.sessions_opened)),
        *_by("import sessions ended", counts.sessions_by_status),
        ("observables import sessions accepted", _n(counts.session_observables_accepted)),
        ("observables import sessions rejected", _n(counts.session_observables_rejected)),
        ("rejections ThreatStream did not attribute", _n(counts.rejections_unattributed)),
        ("observables ThreatStream refused (dead-lettered with its reason)", _n(counts.rejected)),
        ("permissions the ThreatStream user lacks", ", ".join(counts.missing_permissions) or "none"),
        ("messages completed", _n(counts.completed)),
        ("messages given back for later", _n(counts.abandoned)),
        ("messages dead-lettered", _n(counts.dead_lettered)),
        *_by("dead-lettered", counts.dead_lettered_by_reason),
        ("settled after their lock had lapsed (delivered again)", _n(counts.lock_lost)),
        ("messages still held", _n(counts.held)),
    ]


def _api_rows(s: dict[str, Any]) -> list[Row]:
    graph, ts, la = s["graph"], s["threatstream"], s["loganalytics"]
    return [
        ("Log Analytics", "queries", _n(la["queries"])),
        ("Log Analytics", "rows returned", _n(la["rows_returned"])),
        ("Log Analytics", "partial results", _n(la["partial_results"])),
        ("Graph", "HTTP requests", _n(graph["http_requests"])),
        *[("Graph", f"answered {status}", _n(n)) for status, n in sorted(graph["requests_by_status"].items())],
        ("Graph", "lookups", _n(graph["lookups"])),
        ("Graph", "lookups answered 429", _n(graph["items_429"])),
        *[("ThreatStream", f"{request}", _n(n)) for request, n in sorted(ts["requests"].items())],
        ("ThreatStream", "import sessions", _n(ts["import_sessions"])),
        *[("ThreatStream", f"import sessions {status}", _n(n)) for status, n in ts["sessions_by_status"].items()],
        ("ThreatStream", "session observables accepted", _n(ts["session_observables_accepted"])),
        ("ThreatStream", "session observables rejected", _n(ts["session_observables_rejected"])),
        ("ThreatStream", "sessions the demo's analyst approved", _n(ts["sessions_approved_by_demo"])),
        (
            "ThreatStream",
            "observables held (active / inactive)",
            f"{ts['objects']:,} ({ts['active']:,} / {ts['inactive']:,})",
        ),
        ("ThreatStream", "created / updated", f"{ts['created']:,} / {ts['updated']:,}"),
        ("ThreatStream", "created inactive (expiry must never create)", _n(ts["created_inactive"])),
        ("ThreatStream", "duplicates created", _n(ts["duplicates_created"])),
        *[("ThreatStream", f"upsert objects left out: {why}", _n(n)) for why, n in ts["ignored_reasons"].items()],
        (
            "ThreatStream",
            "foreign entries seeded / unchanged",
            f"{ts['foreign']['seeded']:,} / {ts['foreign']['unchanged']:,}",
        ),
        ("ThreatStream", "still waiting for approval", _n(ts["pending_approval"])),
        *[(str(api), "requests inside a Retry-After window", _n(n)) for api, n in s["inside_retry_after"].items()],
    ]


def _expected_rows(s: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for outcome, count in s["expected"].items():
        reasons: dict[str, int] = s["expected_reasons"].get(outcome, {})
        rows.append((outcome, "(all)", _n(count)))
        rows += [(outcome, reason, _n(n)) for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    rows += [("observable type", kind, _n(n)) for kind, n in sorted(s["observable_types"].items())]
    return rows
