"""Runs one scenario against a fresh sandbox and turns what happened into the run's figures."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import figures
from bench.counts import PipelineCounts, StageCounts, pipeline_counts, read_stage_counts
from bench.processes import Child, Children, base_environment, children, peak_rss_mib
from bench.sandbox import LATENCIES_MS, Sandbox, SandboxOptions, StatsSampler, start_sandbox
from bench.scenarios import Kind, Scenario
from tibridge.cli.commands import unknown_settings
from tibridge.cli.demo import reconcile
from tibridge.cli.pipeline import PipelineSettings, load_pipeline_settings
from tibridge.collector.settings import CollectorSettings
from tibridge.common.bus import BusUnavailable
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.contracts import SCORABLE_TYPES
from tibridge.common.settings import BusKind, from_environment
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
)
from tibridge.publisher.settings import PublisherSettings
from tibridge.scorer.settings import ScorerSettings, UnscorableHandling

SERVICE_READY_SECONDS = 180.0
STOP_GRACE_SECONDS = 60.0
POLL_SECONDS = 0.1
LOG_TAIL_CHARACTERS = 200_000
PEEK_SECONDS = 1.0
SCORABLE = frozenset(str(kind) for kind in SCORABLE_TYPES)


@dataclass(frozen=True)
class RunOptions:
    seed: int
    anchor: datetime
    timeout_seconds: float | None  # per scenario; None: as long as it takes
    # time.monotonic() at which any run still going is stopped (the invocation's --deadline); None: no deadline
    deadline: float | None = None
    # Per API; the by default. Only the harness's own test turns them off.
    latencies_ms: Mapping[str, int] = field(default_factory=lambda: dict(LATENCIES_MS))


@dataclass
class Timing:
    origin: float  # monotonic: when the measured process(es) were started
    finished: float | None = None  # None: stopped at the timeout, or `gave_up`
    gave_up: str | None = None  # why the harness stopped waiting before the deadline (a process died)
    collected: float | None = None
    scored: float | None = None


def _tibridge_env(sandbox: Sandbox, directory: Path, scenario: Scenario) -> dict[str, str]:
    env = base_environment()
    env.update(sandbox.env)
    env.update(
        {
            "TIBRIDGE_BUS": "memory" if scenario.kind is Kind.ALL_IN_ONE else "servicebus",
            "TIBRIDGE_HEALTH_PORT": "0",
            "TIBRIDGE_LOG_LEVEL": "WARNING",
            "TIBRIDGE_CHECKPOINT_STORE": "file",
            "TIBRIDGE_CHECKPOINT_PATH": str(directory / "checkpoint.json"),
            "TIBRIDGE_PUBLISHER_MODE": scenario.mode,
        }
    )
    return env


def tibridge_settings(env: Mapping[str, str]) -> PipelineSettings:
    """tibridge's settings as its processes load them from `env`, for the policy and batch size they ran with.
    A TIBRIDGE_* variable no service reads is refused: a renamed setting would otherwise be silently left at
    its default. The bus is left out: the three-process run learns the double's address only once it listens,
    and nothing read from these settings depends on it."""
    unknown = unknown_settings(env)
    if unknown:
        raise ValueError("; ".join(unknown))
    return load_pipeline_settings({**from_environment(env), "bus": BusKind.MEMORY})


def expected_policy(settings: PipelineSettings) -> dict[str, str]:
    """The query of /_sandbox/expected and /_sandbox/reconcile for tibridge run with these settings: the
    scorer's threshold, unscorable handling and classifications, the collector's non-global IPs, as the
    demo asks the sandbox."""
    scoring = settings.of(ScorerSettings).scorer
    policy = {
        "threshold": str(scoring.threshold),
        "forward_unscorable": str(scoring.unscorable is UnscorableHandling.FORWARD).lower(),
        "drop_non_global": str(settings.of(CollectorSettings).collector.reject_non_global_ips).lower(),
    }
    if scoring.allowed_classifications:
        policy["allowed_classifications"] = ",".join(sorted(scoring.allowed_classifications))
    return policy


def _deadline(origin: float, options: RunOptions) -> float:
    timeout = origin + options.timeout_seconds if options.timeout_seconds is not None else float("inf")
    return min(timeout, options.deadline if options.deadline is not None else float("inf"))


def _wait_for_exit(child: Child, deadline: float) -> float | None:
    """When the child exited (monotonic), or None if the deadline came first."""
    while child.reap(block=False) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(POLL_SECONDS)
    return time.monotonic()


def _run_logic_app(group: Children, env: dict[str, str], options: RunOptions) -> tuple[Timing, dict[str, Any]]:
    report = group.directory / "logic-app.json"
    child = group.spawn("logic-app-model", ["-m", "bench.logicapp", "--report", str(report)], env)
    timing = Timing(child.spawned)
    timing.finished = _wait_for_exit(child, _deadline(child.spawned, options))
    if timing.finished is not None and child.usage is not None and child.usage.exit_code != 0:
        raise RuntimeError(f"the Logic App model failed:\n{child.stderr_tail()}")
    return timing, json.loads(report.read_text()) if report.exists() else {}


def _run_all_in_one(group: Children, env: dict[str, str], options: RunOptions) -> tuple[Timing, dict[str, Path]]:
    report = group.directory / "tibridge.json"
    child = group.spawn("tibridge", ["-m", "bench.runner", "pipeline", "--report", str(report)], env)
    timing = Timing(child.spawned)
    timing.finished = _wait_for_exit(child, _deadline(child.spawned, options))
    return timing, {child.name: report}


def _exited(consumers: Sequence[Child]) -> str | None:
    """Which of the long-running processes has exited (none should before the harness stops it)."""
    gone = [f"{child.name} (exit code {usage.exit_code})" for child in consumers if (usage := child.reap(block=False))]
    return f"{', '.join(gone)} exited before the subscriptions were empty" if gone else None


async def _drained(
    connection_string: str, collector: Child, consumers: Sequence[Child], timing: Timing, deadline: float
) -> None:
    """Once the collector finished: when the scorers' subscription, then the publisher's, hold nothing.
    Gives up (`timing.gave_up`) as soon as one of the consumers exits: nothing would drain its subscription.

    A peek sees locked messages too, and a service publishes its output before it completes its input, so
    looking upstream first never misses work moving between the topics."""
    bus = ServiceBusBus.from_connection_string(connection_string)
    try:
        while collector.reap(block=False) is None:
            timing.gave_up = _exited(consumers)
            if time.monotonic() > deadline or timing.gave_up:
                return
            await asyncio.sleep(POLL_SECONDS)
        timing.collected = time.monotonic()
        while time.monotonic() <= deadline:
            timing.gave_up = _exited(consumers)
            if timing.gave_up:
                return
            if not await _holds_messages(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION):
                timing.scored = timing.scored or time.monotonic()
                if not await _holds_messages(bus, SCORED_TOPIC, PUBLISHER_SUBSCRIPTION):
                    timing.finished = time.monotonic()
                    return
            await asyncio.sleep(PEEK_SECONDS)
    finally:
        await bus.close()


async def _holds_messages(bus: ServiceBusBus, topic: str, subscription: str) -> bool:
    """A peek that did not answer in time (the double busy with the services' traffic) counts as "still holds
    messages": the next poll asks again, and the scenario's deadline bounds the waiting."""
    try:
        return await bus.has_pending(topic, subscription)
    except BusUnavailable as error:
        print(f"    peek at {topic}/{subscription} failed, asking again: {error}", file=sys.stderr, flush=True)
        return True


def _run_three_process(
    group: Children, env: dict[str, str], scenario: Scenario, options: RunOptions
) -> tuple[Timing, dict[str, Path]]:
    double = group.spawn("sbdouble", ["-m", "tests.sbdouble", "--port", "0"], env)
    connection_string = double.wait_for_line(lambda line: line.startswith("Endpoint="), SERVICE_READY_SECONDS)
    env = {**env, "TIBRIDGE_SERVICEBUS_CONNECTION_STRING": connection_string}

    def runner(name: str, role: str) -> tuple[Child, Path]:
        report = group.directory / f"{name}.json"
        return group.spawn(name, ["-m", "bench.runner", role, "--report", str(report)], env), report

    consumers = [runner("publisher", "publisher")]
    consumers += [runner(f"scorer-{n}", "scorer") for n in range(1, scenario.scorers + 1)]
    for child, _ in consumers:
        child.wait_for_line(lambda line: line == "started", SERVICE_READY_SECONDS)
    collector, collector_report = runner("collector", "collector")
    timing = Timing(collector.spawned)
    consumer_children = [child for child, _ in consumers]
    deadline = _deadline(collector.spawned, options)
    asyncio.run(_drained(connection_string, collector, consumer_children, timing, deadline))
    for child, _ in consumers:
        child.stop(STOP_GRACE_SECONDS)
    collector.stop(STOP_GRACE_SECONDS)
    return timing, {collector.name: collector_report} | {child.name: report for child, report in consumers}


def _read_reports(paths: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """The runners' reports by child name (a runner stopped by SIGKILL leaves none)."""
    return {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}


def _stage_times(reports: Sequence[Mapping[str, Any]], counts: PipelineCounts, timing: Timing) -> None:
    """For the all-in-one run: when each stage reached its final count, from the runner's timeline."""
    timeline = [entry for report in reports for entry in report["timeline"]]
    emitted = [(t, e) for t, e, _, _ in timeline]
    scored = [(t, s) for t, _, s, _ in timeline]
    if counts.emitted and timing.collected is None:
        timing.collected = figures.first_time_reaching(emitted, counts.emitted)
    if counts.scored and timing.scored is None:
        timing.scored = figures.first_time_reaching(scored, counts.scored)


def _profiles(scenario: Scenario, sessions: Sequence[Mapping[str, Any]], counts: PipelineCounts) -> int:
    """What a request must keep apart: in approval mode the import-session profiles seen, in direct mode
    the lanes (a publish and an expire batch never share a request)."""
    if scenario.mode == "approval":
        fields = ("default_state", "confidence", "severity", "classification", "threat_type", "expiration_ts")
        return len({tuple(session.get(name) for name in fields) for session in sessions})
    return counts.lanes


def _process_figures(child: Child, report: Mapping[str, Any] | None) -> dict[str, Any]:
    usage = child.usage
    # A child's own report of its peak, at its very end, beats the harness's last look at it.
    peak = (report or {}).get("peak_rss_mib") or (usage.peak_rss_mib if usage else None)
    figures_: dict[str, Any] = {
        "name": child.name,
        "cpu_seconds": round(usage.cpu_seconds, 2) if usage else None,
        "peak_rss_mib": round(peak, 1) if peak is not None else None,
        "exit_code": usage.exit_code if usage else None,
    }
    if report is not None and report.get("cpu_seconds_at_start") is not None:
        figures_["cpu_seconds_at_start"] = round(report["cpu_seconds_at_start"], 2)
        figures_["startup_seconds"] = round(report["started_monotonic"] - child.spawned, 2)
    if usage is not None and usage.exit_code != 0:
        figures_["last_error"] = _last_error(child.stderr_tail(LOG_TAIL_CHARACTERS))
    return figures_


def _last_error(log: str) -> str | None:
    """The last ERROR of a process's JSON log, with the last line of its exception (the temporary directory
    with the whole log is gone once the scenario ends)."""
    for line in reversed(log.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
            exception = str(entry.get("exception", "")).strip().splitlines()
            return str(entry.get("message", "")) + (f" — {exception[-1]}" if exception else "")
    return None


def _unfinished(
    options: RunOptions,
    timing: Timing,
    counts: PipelineCounts,
    delivery: figures.Delivery,
    unique_scorable: int,
    stats: Mapping[str, Any],
    achieved: float | None,
) -> str:
    """How far a run got before the timeout stopped it (or a process died), and what the lookups still needed
    at its pace."""
    if timing.gave_up is not None:
        stopped = f"did not finish: {timing.gave_up}"
    else:
        ran = _deadline(timing.origin, options) - timing.origin
        by_timeout = options.timeout_seconds is not None and ran >= options.timeout_seconds
        stopped = f"stopped by the {'timeout' if by_timeout else 'invocation’s deadline'} after {ran:.0f} s"
    text = (
        f"{stopped}, before it finished: {counts.emitted:,} indicators "
        f"on the bus, {counts.scored:,} scored, {counts.completed:,} settled by the publisher; "
        f"{delivery.delivered:,} of {delivery.expected:,} expected values delivered"
    )
    remaining = unique_scorable - stats["graph"]["lookups"]
    if achieved and remaining > 0:
        text += (
            f"; at its sustained {achieved:.1f} lookups/s the remaining {remaining:,} of {unique_scorable:,} "
            f"unique lookups needed about {remaining / achieved:,.0f} s more"
        )
    return text


def _seconds(moment: float | None, origin: float) -> float | None:
    return round(moment - origin, 2) if moment is not None else None


def run_scenario(scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario.name}-") as temporary:
        directory = Path(temporary)
        with children(directory) as group:
            sandbox_options = SandboxOptions(
                scenario.indicators,
                options.seed,
                options.anchor,
                graph_ceiling=scenario.graph_ceiling,
                latencies_ms=options.latencies_ms,
                # A benefit of the doubt for the model: a host MDTI never saw is a clean 200, not a 404 that
                # would fail the playbook's For-each (external-apis.md §2 allows both).
                never_seen="unknown" if scenario.kind is Kind.LOGIC_APP else "404",
            )
            sandbox = start_sandbox(group, sandbox_options, base_environment())
            try:
                return _measure(scenario, options, group, sandbox, directory)
            finally:
                sandbox.close()


@dataclass
class Observed:
    """Everything a scenario left behind, read before its sandbox stopped."""

    scenario: Scenario
    options: RunOptions
    batch_size: int  # the publisher's, as tibridge ran with it
    timing: Timing
    stats: dict[str, Any]  # the sandbox's traffic counters, before the harness's own requests
    expected: dict[str, Any]
    sessions: list[dict[str, Any]]
    approved: int
    objects: list[dict[str, Any]]
    # The sandbox's reconciliation after the harness approved what waited, as an analyst would have.
    threatstream_problems: list[str]
    stages: StageCounts  # every process's typed counts
    counts: PipelineCounts  # their sums
    reports: dict[str, dict[str, Any]]  # the runners' reports by process name
    model_report: dict[str, Any]
    processes: list[dict[str, Any]]
    lookup_samples: list[tuple[float, int]]  # (seconds since the origin, Graph lookups answered)
    sandbox_ready_seconds: float
    load_average: dict[str, list[float]]


def _measure(
    scenario: Scenario, options: RunOptions, group: Children, sandbox: Sandbox, directory: Path
) -> dict[str, Any]:
    env = _tibridge_env(sandbox, directory, scenario)
    settings = tibridge_settings(env)
    model_report: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    load_before = os.getloadavg()
    with StatsSampler(sandbox) as sampler:
        if scenario.kind is Kind.LOGIC_APP:
            timing, model_report = _run_logic_app(group, env, options)
        elif scenario.kind is Kind.ALL_IN_ONE:
            timing, paths = _run_all_in_one(group, env, options)
        else:
            timing, paths = _run_three_process(group, env, scenario, options)
    for child in group.started:  # all but the sandbox: what it holds is read below
        if child.name != "sandbox":
            child.stop(STOP_GRACE_SECONDS)
    reports = _read_reports(paths)
    # The sandbox's peak while it served the run, before it renders the big answers below.
    own_reports = reports | {
        "logic-app-model": model_report,
        "sandbox": {"peak_rss_mib": peak_rss_mib(sandbox.child.pid)},
    }
    stats = sandbox.stats()
    policy = expected_policy(settings)
    expected = sandbox.expected(policy)
    sandbox.without_latency()
    sessions = sandbox.sessions(stats["threatstream"]["import_sessions"])
    approved = sandbox.approve_pending(len(sessions))
    threatstream_problems = sandbox.reconcile(policy) if scenario.is_tibridge else []
    objects = sandbox.objects()
    stages = read_stage_counts(report["counts"] for report in reports.values())
    counts = pipeline_counts(stages)
    if scenario.kind is Kind.ALL_IN_ONE:
        _stage_times(list(reports.values()), counts, timing)
    group.stop_all()
    return run_figures(
        Observed(
            scenario=scenario,
            options=options,
            batch_size=settings.of(PublisherSettings).publisher.batch_size,
            timing=timing,
            stats=stats,
            expected=expected,
            sessions=sessions,
            approved=approved,
            objects=objects,
            threatstream_problems=threatstream_problems,
            stages=stages,
            counts=counts,
            reports=reports,
            model_report=model_report,
            processes=[_process_figures(child, own_reports.get(child.name)) for child in group.started],
            lookup_samples=[(t - timing.origin, n) for t, n, _, _ in sampler.samples],
            sandbox_ready_seconds=sandbox.ready_seconds,
            load_average={
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in os.getloadavg()],
            },
        )
    )


def _reconciliation(seen: Observed) -> list[str]:
    """The demo's reconciliation of a tibridge run: the sandbox's verdict on ThreatStream's contents, requests
    inside Retry-After windows, and what the one publisher dead-lettered and still held."""
    publishers = seen.stages.publishers
    problems = reconcile(
        seen.threatstream_problems,
        seen.stats,
        rejected_values=len(seen.expected["threatstream"]["rejected"]),
        publisher=publishers[0] if len(publishers) == 1 else None,
    )
    if len(publishers) != 1:
        problems.append(f"expected the counts of one publisher, got {len(publishers)} (a runner left no report)")
    return problems


def run_figures(seen: Observed) -> dict[str, Any]:
    """The run's record: every figure of issue 11, computed from what the scenario left behind."""
    scenario, stats, counts, timing = seen.scenario, seen.stats, seen.counts, seen.timing
    active_expected = seen.expected["threatstream"]["active"]
    not_active_expected = seen.expected["threatstream"]["not_active"]
    active_objects = [obj["value"] for obj in seen.objects if obj["status"] == "active"]
    delivery = figures.delivery(active_expected, not_active_expected, active_objects)
    unique_scorable = len(
        {
            e["value"]
            for e in seen.expected["indicators"].values()
            if e["outcome"] in ("publish", "drop") and e["observable_type"] in SCORABLE and e["value"]
        }
    )
    elapsed = _seconds(timing.finished, timing.origin)
    achieved = figures.sustained_rate(seen.lookup_samples)
    profiles = _profiles(scenario, seen.sessions, counts)
    tibridge_processes = [p for p in seen.processes if p["name"] not in ("sandbox", "sbdouble", "logic-app-model")]
    work_cpu = sum((p["cpu_seconds"] or 0) - p.get("cpu_seconds_at_start", 0) for p in tibridge_processes)
    startup_cpu = sum(p.get("cpu_seconds_at_start", 0) for p in tibridge_processes)
    problems: list[str] = []
    if scenario.is_tibridge:
        problems = _reconciliation(seen)
        crashed = [p for p in tibridge_processes if p["exit_code"] not in (0, None)]
        problems += [
            f"{p['name']} exited with code {p['exit_code']}" + (f": {p['last_error']}" if p.get("last_error") else "")
            for p in crashed
        ]
    if elapsed is None:
        problems.insert(0, _unfinished(seen.options, timing, counts, delivery, unique_scorable, stats, achieved))
    published = counts.completed
    per_thousand = figures.per_thousand(work_cpu, scenario.indicators)
    ceiling_share = figures.ratio(achieved, scenario.graph_ceiling)
    return {
        "scenario": scenario.name,
        "title": scenario.title,
        "kind": str(scenario.kind),
        "group": str(scenario.group),
        "indicators": scenario.indicators,
        "scorers": scenario.scorers if scenario.kind is Kind.THREE_PROCESS else None,
        "graph_ceiling": scenario.graph_ceiling,
        "threatstream_mode": scenario.mode if scenario.is_tibridge else "import (approval)",
        "finished": elapsed is not None,
        "end_to_end_seconds": elapsed,
        "indicators_per_second": round(scenario.indicators / elapsed, 1) if elapsed else None,
        "stage_seconds": {
            "collected": _seconds(timing.collected, timing.origin),
            "scored": _seconds(timing.scored, timing.origin),
            "published": elapsed,
        },
        "delivered": {
            "expected": delivery.expected,
            "delivered": delivery.delivered,
            "ratio": round(delivery.ratio, 4),
            "extra_active": delivery.extra,
            "wrongly_active": delivery.wrongly_active,
        },
        "duplicates": stats["threatstream"]["duplicates_created"],
        "problems": problems,
        "graph": {
            "requests": stats["graph"]["http_requests"],
            "lookups": stats["graph"]["lookups"],
            "unique_scorable": unique_scorable,
            "floor": figures.graph_floor(unique_scorable),
            "retries": counts.graph_retries if scenario.is_tibridge else seen.model_report.get("retries"),
            # tibridge's own count of the same requests: $batch, and the rest (single GETs and probes)
            "batch_requests": counts.graph_batch_requests if scenario.is_tibridge else None,
            "other_requests": counts.graph_requests - counts.graph_batch_requests if scenario.is_tibridge else None,
        },
        "threatstream": {
            "requests": sum(stats["threatstream"]["requests"].values()),
            "by_endpoint": stats["threatstream"]["requests"],
            "import_sessions": stats["threatstream"]["import_sessions"],
            "sessions_approved_afterwards": seen.approved,
            "published": published,
            "batch_size": seen.batch_size,
            "profiles": profiles,
            "bound": figures.threatstream_bound(published, seen.batch_size, profiles) if scenario.is_tibridge else None,
        },
        "loganalytics": stats["loganalytics"],
        "http_429": stats["graph"]["items_429"]
        + sum(by_status.get("429", 0) for by_status in stats["requests"].values()),
        "inside_retry_after": sum(stats["inside_retry_after"].values()),
        "lookups_per_second": round(achieved, 1) if achieved is not None else None,
        "ceiling_ratio": round(ceiling_share, 3) if ceiling_share is not None else None,
        "cpu": {
            "tibridge_work_seconds": round(work_cpu, 2) if scenario.is_tibridge else None,
            "tibridge_startup_seconds": round(startup_cpu, 2) if scenario.is_tibridge else None,
            "seconds_per_1000_indicators": round(per_thousand, 3)
            if scenario.is_tibridge and per_thousand is not None
            else None,
        },
        "tibridge_peak_rss_mib": max((p["peak_rss_mib"] or 0 for p in tibridge_processes), default=None),
        "processes": seen.processes,
        "counts": dataclasses.asdict(counts),
        "logic_app_model": seen.model_report or None,
        "sandbox_ready_seconds": seen.sandbox_ready_seconds,
        "load_average": seen.load_average,
        "latencies_ms": dict(seen.options.latencies_ms),
        "lookup_samples": [[round(t, 2), n] for t, n in seen.lookup_samples],
        "stage_timeline": [
            [round(t - timing.origin, 2), e, s, c]
            for report in seen.reports.values()
            if report["role"] == "pipeline"
            for t, e, s, c in report["timeline"]
        ],
    }
