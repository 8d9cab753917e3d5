"""The invocation's JSON and Markdown: the figures of every run, their ratios to the Logic App model of the
same invocation, and issue 11's targets with whether each is met."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.processes import ROOT
from bench.targets import Verdict, evaluate, speedup

Run = Mapping[str, Any]
CLOCKED = ("tibridge", "collector")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
        memory_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        memory_kib = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_revision() -> str:
    def git(*arguments: str) -> str:
        result = subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD")
    return revision + ("+uncommitted changes" if git("status", "--porcelain", "--", ":!bench/results") else "")


def with_ratios(runs: Sequence[Run]) -> list[dict[str, Any]]:
    baseline = next((run for run in runs if run["kind"] == "logic-app-model"), None)
    enriched = []
    for run in runs:
        ratios: dict[str, float | None] = {"speedup": None, "graph_requests": None, "threatstream_requests": None}
        # Ratios only where the model ran the same data: a 100k run against a 10k model says nothing.
        if baseline is not None and run is not baseline and run["indicators"] == baseline["indicators"]:
            ratios["speedup"] = _round(speedup(run, baseline), 2)
            ratios["graph_requests"] = _round(_share(run["graph"]["requests"], baseline["graph"]["requests"]), 4)
            ratios["threatstream_requests"] = _round(
                _share(run["threatstream"]["requests"], baseline["threatstream"]["requests"]), 4
            )
        enriched.append({**run, "versus_logic_app_model": ratios})
    return enriched


def _share(value: float, of: float) -> float | None:
    return value / of if of else None


def _round(value: float | None, digits: int) -> float | None:
    return round(value, digits) if value is not None else None


def document(invocation: Mapping[str, Any], runs: Sequence[Run]) -> dict[str, Any]:
    enriched = with_ratios(runs)
    return {
        "invocation": dict(invocation),
        "runs": enriched,
        "targets": [verdict.__dict__ for verdict in evaluate(enriched)],
    }


# -- Markdown ---------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _cpu_per_thousand(run: Run, digits: int) -> str:
    """Unknown for a run stopped at the timeout: it did not process all its indicators."""
    return _number(run["cpu"]["seconds_per_1000_indicators"], digits) if run["finished"] else "—"


def _rss(run: Run) -> str:
    tibridge = [p for p in run["processes"] if p["name"] not in ("sandbox", "sbdouble", "logic-app-model")]
    if not tibridge:
        return "—"
    largest = max(tibridge, key=lambda p: p["peak_rss_mib"] or 0)
    if len(tibridge) == 1:
        return _number(largest["peak_rss_mib"])
    return f"{_number(largest['peak_rss_mib'])} ({largest['name']}, largest of {len(tibridge)})"


def _results_table(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| run | indicators | end-to-end | indicators/s | delivered ÷ expected | duplicates | Graph requests "
        "(floor) | ThreatStream requests (bound) | 429s | inside Retry-After | lookups/s (÷ ceiling) | "
        "CPU s / 1,000 indicators | peak RSS MiB | × faster than the model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ceiling = f" ({run['ceiling_ratio']:.0%})" if run["ceiling_ratio"] is not None else ""
        bound = run["threatstream"]["bound"]
        elapsed = _number(run["end_to_end_seconds"], 1, " s") if run["finished"] else "did not finish"
        speed = run["versus_logic_app_model"]["speedup"]
        lines.append(
            f"| {run['title']} | {run['indicators']:,} | {elapsed} | {_number(run['indicators_per_second'], 1)} | "
            f"{run['delivered']['ratio']:.3f} | {run['duplicates']} | "
            f"{run['graph']['requests']:,} ({run['graph']['floor']:,}) | "
            f"{run['threatstream']['requests']:,}{f' ({bound:,})' if bound is not None else ''} | "
            f"{run['http_429']:,} | {run['inside_retry_after']} | "
            f"{_number(run['lookups_per_second'], 1)}{ceiling} | "
            f"{_cpu_per_thousand(run, 3)} | {_rss(run)} | "
            f"{'baseline' if run['kind'] == 'logic-app-model' else _number(speed, 2, '×')} |"
        )
    return lines


def summary_table(runs: Sequence[Run]) -> list[str]:
    """The few columns the README quotes."""
    lines = [
        "| run | indicators | end-to-end | delivered ÷ expected | Graph / ThreatStream requests | "
        "CPU s / 1,000 indicators | peak RSS MiB | × faster than the model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        elapsed = _number(run["end_to_end_seconds"], 1, " s") if run["finished"] else "did not finish (see Problems)"
        speed = run["versus_logic_app_model"]["speedup"]
        lines.append(
            f"| {run['title']} | {run['indicators']:,} | {elapsed} | {run['delivered']['ratio']:.3f} | "
            f"{run['graph']['requests']:,} / {run['threatstream']['requests']:,} | "
            f"{_cpu_per_thousand(run, 2)} | {_rss(run)} | "
            f"{'baseline' if run['kind'] == 'logic-app-model' else _number(speed, 2, '×')} |"
        )
    return lines


def _targets_table(verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for verdict in verdicts:
        met = "not measured" if verdict.met is None else "**yes**" if verdict.met else f"**no** — {verdict.gap}"
        lines.append(f"| {verdict.target} | {verdict.measured} | {met} |")
    return lines


def _stages_table(runs: Sequence[Run]) -> list[str]:
    lines = [
        "| run | start-up on the clock (s) | last indicator on the bus | scoring done | "
        "last ThreatStream write acknowledged | tibridge CPU s (work + start-up) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        if run["kind"] == "logic-app-model":
            continue
        stages, cpu = run["stage_seconds"], run["cpu"]
        # The start-up on the clock: the process started at the origin (three processes: their consumers were
        # up before).
        startup = next((p.get("startup_seconds", 0) for p in run["processes"] if p["name"] in CLOCKED), 0)
        lines.append(
            f"| {run['title']} ({run['indicators']:,}) | {startup:.1f} | {_number(stages['collected'], 1, ' s')} | "
            f"{_number(stages['scored'], 1, ' s')} | {_number(stages['published'], 1, ' s')} | "
            f"{_number(cpu['tibridge_work_seconds'], 1)} + {_number(cpu['tibridge_startup_seconds'], 1)} |"
        )
    return lines


def _model_section(runs: Sequence[Run]) -> list[str]:
    model = next((run for run in runs if run["kind"] == "logic-app-model"), None)
    if model is None or not model.get("logic_app_model"):
        return []
    report = model["logic_app_model"]
    delivered = model["delivered"]
    lines = [
        "## The Logic App model",
        "",
        "A **model** of the playbook's algorithm (`bench/logicapp.py`), not the Logic App itself, given every benefit "
        "of the doubt: it sees every row that perfectly tiled `TimeGenerated > ago(5min)` runs would have given it "
        "over the whole data span (re-published copies included), and does the work of all those runs back to back "
        "at For-each parallelism 20. "
        f"It delivered {delivered['delivered']:,} of the {delivered['expected']:,} values a correct pipeline leaves "
        f"active in ThreatStream (**{delivered['ratio']:.1%}**); it also made {delivered['extra_active']:,} values "
        f"active that a correct run leaves out ({delivered['wrongly_active']:,} of them must not be active: unscored "
        "URLs and hashes, revoked or expired indicators).",
        "",
        "**delivered ÷ expected** = |expected active ∩ active in ThreatStream| ÷ |expected active|, where *expected "
        "active* is the sandbox's expected outcome for tibridge's default policy (score ≥ 75, URLs and hashes "
        "dropped, non-global IPs refused) and values are compared case-insensitively, IPs in compressed form. Its "
        "import sessions are approved after the clock stops, as an analyst would. It misses IPs outside "
        "`NetworkSourceIP` (the playbook reads no other IP column) and values it sends as the feed spelled them "
        "(defanged, IDN, trailing dots), which ThreatStream does not recognise.",
        "",
        "| scope (in the playbook's order) | rows | skipped (an earlier scope failed in that run) | Graph lookups | "
        "imports | items lost after retries | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, scope in report["scopes"].items():
        lines.append(
            f"| {name} | {scope['rows']:,} | {scope['skipped']:,} | {scope['graph_lookups']:,} | "
            f"{scope['imports']:,} | {scope['failed']:,} | {scope['seconds']:.1f} |"
        )
    lines += [
        "",
        f"Requests: {', '.join(f'{api} {n:,}' for api, n in report['requests'].items())}; "
        f"retries {report['retries']:,}; "
        f"five-minute runs with rows {report['windows']:,}, of which {report['failed_windows']:,} lost a scope. "
        "Log Analytics "
        "queries are five slices per pass sent at once (the sandbox's KQL needs `summarize`; Log Analytics runs five "
        "at once); the playbook itself makes four "
        "queries every five minutes, 16,128 over 14 days.",
        "",
    ]
    return lines


def _processes_table(runs: Sequence[Run]) -> list[str]:
    lines = ["| run | process | CPU s | of which start-up | peak RSS MiB |", "|---|---|---|---|---|"]
    for run in runs:
        for process in run["processes"]:
            name = process["name"]
            if name == "sandbox" and run.get("sandbox_ready_seconds") is not None:
                name += f" (generated its data and listened after {run['sandbox_ready_seconds']:.1f} s)"
            lines.append(
                f"| {run['title']} ({run['indicators']:,}) | {name} | "
                f"{_number(process['cpu_seconds'], 1)} | {_number(process.get('cpu_seconds_at_start'), 1)} | "
                f"{_number(process['peak_rss_mib'])} |"
            )
    return lines


def markdown(doc: Mapping[str, Any]) -> str:
    invocation, runs = doc["invocation"], doc["runs"]
    verdicts = [Verdict(**verdict) for verdict in doc["targets"]]
    host = invocation["machine"]
    problems = [(run["title"], run["indicators"], problem) for run in runs for problem in run["problems"]]
    lines = [
        f"# tibridge benchmark: `{invocation['plan']}`",
        "",
        f"`{invocation['command']}` — {invocation['started_at']} to {invocation['finished_at'] or 'unfinished'}, "
        f"tibridge {invocation['revision']}, on {host['cpus']} cores ({host['cpu_model'] or 'unknown CPU'}), "
        f"{host['memory_gib']} GiB, Python {host['python']}.",
        "",
        f"Sandbox per scenario: seed {invocation['seed']}, data anchored at {invocation['anchor']}, latencies Log "
        "Analytics 1 s per query, Graph 100 ms and ThreatStream 500 ms per request. tibridge runs with its default "
        "settings except the publisher's ThreatStream mode (direct unless the run says approval), health port off "
        "and log level WARNING.",
        "",
    ]
    if invocation.get("note"):
        lines += [f"> **Note.** {invocation['note']}", ""]
    if invocation.get("not_started"):
        lines += [
            f"**Not started**, the invocation's deadline ({invocation['deadline']}) having passed: "
            f"{', '.join(invocation['not_started'])}.",
            "",
        ]
    if invocation.get("failed"):
        lines += [f"**Failed in the harness** (no figures): {', '.join(invocation['failed'])}.", ""]
    lines += ["## Summary", "", *summary_table(runs), "", "## Results", "", *_results_table(runs), ""]
    lines += [
        "End-to-end: from starting the process(es) until the last ThreatStream write was acknowledged (for the three "
        "processes: until both subscriptions were empty); start-up included. CPU: tibridge's processes only, without "
        "their start-up (interpreter and imports, shown below). Lookups/s: Graph lookups answered per second between "
        "5% and 95% of the run's lookups. Graph floor ⌈unique scorable / 20⌉; ThreatStream bound ⌈published / batch "
        "size⌉ + profiles (direct mode: publish and expire lanes; approval mode: import-session profiles).",
        "",
        "## Targets (issue 11)",
        "",
        *_targets_table(verdicts),
        "",
        "## Where tibridge's time goes",
        "",
        *_stages_table(runs),
        "",
        *_model_section(runs),
        "## Processes",
        "",
        *_processes_table(runs),
        "",
    ]
    if problems:
        lines += ["## Problems", "", *[f"- {title} ({n:,}): {problem}" for title, n, problem in problems], ""]
    charts = invocation.get("charts") or []
    if charts:
        lines += ["## Charts", "", *[f"![{name}]({name})" for name in charts], ""]
    return "\n".join(lines)


def write(directory: Path, name: str, doc: Mapping[str, Any]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown(doc), encoding="utf-8")
    return json_path, markdown_path
