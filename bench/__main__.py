"""`make bench` / `make bench-quick`: every scenario of a plan, each against a fresh sandbox, into bench/results/.

    python -m bench [--plan full|quick] [--only SCENARIO ...] [--timeout SECONDS] [--deadline HH:MM] [--note TEXT]

Writes <plan>.json, <plan>.md and <plan>-*.png after every scenario, so an interrupted invocation still
leaves what it measured. Nothing in the test suite times anything: these numbers are for comparing changes
on the same machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import charts, report
from bench.harness import RunOptions, run_scenario
from bench.scenarios import PLANS

RESULTS = Path(__file__).parent / "results"
SEED = 7


def _anchor(now: datetime) -> datetime:
    """One anchor for every scenario of the invocation (the same data each time), an hour or more in the
    past so the collector's settle delay leaves no row for a later pass."""
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="full")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these scenarios of the plan")
    parser.add_argument("--timeout", type=float, help="stop a scenario after this many seconds (reported as such)")
    parser.add_argument(
        "--deadline",
        type=_utc_time,
        metavar="HH:MM",
        help="UTC time of day: stop a scenario still running then (reported as such) and start none after it",
    )
    parser.add_argument("--note", default="", help="said in the results, e.g. what else ran on the machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", type=Path, metavar="JSON", help="only write the Markdown and charts again")
    arguments = parser.parse_args(argv)
    if arguments.render:
        render(arguments.render)
        return 0
    scenarios = PLANS[arguments.plan]
    if arguments.only:
        unknown = set(arguments.only) - {s.name for s in scenarios}
        if unknown:
            parser.error(
                f"no scenario {', '.join(sorted(unknown))} in plan {arguments.plan}; "
                f"choose from {', '.join(s.name for s in scenarios)}"
            )
        scenarios = [s for s in scenarios if s.name in arguments.only]
    name = arguments.plan if not arguments.only else f"{arguments.plan}-partial"
    started = datetime.now(UTC)
    invocation: dict[str, Any] = {
        "plan": arguments.plan,
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": None,
        "revision": report.git_revision(),
        "machine": report.machine(),
        "seed": SEED,
        "anchor": _anchor(started).isoformat(),
        "timeout_seconds": arguments.timeout,
        "deadline": arguments.deadline.isoformat(timespec="minutes") if arguments.deadline else None,
        "not_started": [],  # the deadline had passed
        "failed": [],  # raised in the harness (the traceback went to stderr)
        "note": arguments.note,
        "charts": [],
    }
    options = RunOptions(SEED, _anchor(started), arguments.timeout, _monotonic(arguments.deadline))
    arguments.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for number, scenario in enumerate(scenarios, start=1):
        if arguments.deadline is not None and datetime.now(UTC) >= arguments.deadline:
            print(f"[{number}/{len(scenarios)}] {scenario.name}: not started, the deadline has passed", flush=True)
            invocation["not_started"].append(scenario.name)
            continue
        print(f"[{number}/{len(scenarios)}] {scenario.name} ...", flush=True)
        try:
            run = run_scenario(scenario, options)
        except Exception:  # one broken scenario must not cost the others' figures
            invocation["failed"].append(scenario.name)
            print(f"{scenario.name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            continue
        runs.append(run)
        print(
            f"    {run['end_to_end_seconds']} s, delivered {run['delivered']['ratio']:.3f}, "
            f"Graph {run['graph']['requests']}, ThreatStream {run['threatstream']['requests']}",
            flush=True,
        )
        _write(arguments.out, name, invocation, runs)
    invocation["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write(arguments.out, name, invocation, runs)
    return 1 if invocation["failed"] or not runs else 0


def _utc_time(text: str) -> datetime:
    """HH:MM as the next such moment in UTC (today, or tomorrow once it has passed today)."""
    try:
        clock = datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise argparse.ArgumentTypeError(f"give the deadline as HH:MM in UTC, not {text!r}") from None
    now = datetime.now(UTC)
    moment = datetime.combine(now.date(), clock, UTC)
    return moment if moment > now else moment + timedelta(days=1)


def _monotonic(moment: datetime | None) -> float | None:
    return None if moment is None else time.monotonic() + (moment - datetime.now(UTC)).total_seconds()


def _write(directory: Path, name: str, invocation: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """After every scenario; a failure to render is reported, never allowed to stop the measuring."""
    try:
        invocation["charts"] = charts.draw(runs, directory, name)
        json_path, markdown_path = report.write(directory, name, report.document(invocation, runs))
    except Exception:
        print(f"could not write the results:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        (directory / f"{name}.raw.json").write_text(json.dumps({"invocation": invocation, "runs": runs}) + "\n")
        return
    print(f"    wrote {json_path} and {markdown_path}", flush=True)


def render(path: Path) -> None:
    """Writes the Markdown and charts again from a results JSON (e.g. after changing how they look)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    name = path.name.removesuffix(".raw.json").removesuffix(".json")
    _write(path.parent, name, doc["invocation"], doc["runs"])


if __name__ == "__main__":
    sys.exit(main())
