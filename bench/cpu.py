"""CPU per indicator of the all-in-one run: `tibridge run --once` on the in-memory bus, with the sandbox in a
process of its own and every API latency at zero, so what is measured is tibridge's own work.

    python -m bench.cpu                                  # 10,000 indicators, 3 runs, the median
    python -m bench.cpu --indicators 2000 --runs 1
    python -m bench.cpu --runs 1 --profile profile       # + pyinstrument: profile.html and profile.txt

Each run resets the sandbox (ThreatStream empty again, same rows), then starts a fresh child process. The child
counts its CPU seconds (user + system, getrusage) from the moment the services are built to the end of the run,
so start-up (interpreter, imports, settings) is left out and printed beside it. A run whose outcome does not
reconcile with what the sandbox expects is reported as failed: less CPU must not mean less work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.processes import Children, base_environment, children

SEED = 7
ANCHOR = "2026-12-01T00:00:00"
READY_SECONDS = 900.0
RUN_SECONDS = 1800.0
# As the benchmark runs tibridge (bench/harness.py), so the two measure the same thing.
TIBRIDGE_ENV: Mapping[str, str] = {
    "TIBRIDGE_BUS": "memory",
    "TIBRIDGE_HEALTH_PORT": "0",
    "TIBRIDGE_LOG_LEVEL": "WARNING",
    "TIBRIDGE_CHECKPOINT_STORE": "file",
    "TIBRIDGE_PUBLISHER_MODE": "direct",
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(report: Path, profile: Path | None) -> int:
    """In the measured process: one `tibridge run --once`, CPU counted from the services being built."""
    from tibridge.cli.commands import run_pipeline
    from tibridge.common.settings import BusKind

    marks: dict[str, float] = {}
    profiler: Any = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")

    def built(_: object) -> None:
        marks["cpu_at_start"] = _cpu_seconds()
        marks["wall_at_start"] = time.monotonic()
        if profiler is not None:
            profiler.start()

    code = asyncio.run(run_pipeline(bus=BusKind.MEMORY, once=True, since=None, on_built=built))
    marks["cpu_at_finish"] = _cpu_seconds()
    marks["wall_at_finish"] = time.monotonic()
    if profiler is not None and profile is not None:
        profiler.stop()
        profile.with_suffix(".html").write_text(profiler.output_html(), encoding="utf-8")
        profile.with_suffix(".txt").write_text(profiler.output_text(unicode=True, show_all=False), encoding="utf-8")
    report.write_text(json.dumps({"exit_code": code, **marks}), encoding="utf-8")
    return code


@dataclass(frozen=True)
class Run:
    cpu_seconds: float  # after start-up
    start_up_cpu_seconds: float
    wall_seconds: float
    reconciled: bool

    def ms_per_indicator(self, indicators: int) -> float:
        return self.cpu_seconds * 1000 / indicators


def _sandbox_env(env_file: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in env_file.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    return env


def _one_run(group: Children, number: int, base_url: str, env: Mapping[str, str], profile: Path | None) -> Run:
    httpx.post(f"{base_url}/_sandbox/reset", timeout=60).raise_for_status()
    report = group.directory / f"run-{number}.json"
    arguments = ["-m", "bench.cpu", "--child-report", str(report)]
    if profile is not None:
        arguments += ["--profile", str(profile)]
    checkpoint = {"TIBRIDGE_CHECKPOINT_PATH": str(group.directory / f"checkpoint-{number}.json")}
    child = group.spawn(f"run-{number}", arguments, {**env, **checkpoint})
    deadline = time.monotonic() + RUN_SECONDS
    while (usage := child.reap(block=False)) is None:
        if time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(f"run {number} did not finish within {RUN_SECONDS:.0f} s")
        time.sleep(0.2)
    if usage.exit_code != 0:
        raise RuntimeError(f"run {number} exited with {usage.exit_code}:\n{child.stderr_tail()}")
    marks = json.loads(report.read_text(encoding="utf-8"))
    reconciliation = httpx.get(f"{base_url}/_sandbox/reconcile", timeout=600).json()
    if not reconciliation["ok"]:
        print(f"run {number} does not reconcile: {reconciliation['problems'][:5]}", file=sys.stderr)
    return Run(
        cpu_seconds=usage.cpu_seconds - marks["cpu_at_start"],
        start_up_cpu_seconds=marks["cpu_at_start"],
        wall_seconds=marks["wall_at_finish"] - marks["wall_at_start"],
        reconciled=bool(reconciliation["ok"]),
    )


def measure(indicators: int, runs: int, profile: Path | None) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="tibridge-cpu-") as directory, children(Path(directory)) as group:
        env_file = group.directory / "sandbox.env"
        sandbox = group.spawn(
            "sandbox",
            [
                *("-m", "tibridge.cli", "sandbox", "--port", "0", "--env-file", str(env_file)),
                *("--indicators", str(indicators), "--seed", str(SEED), "--anchor", ANCHOR),
            ],
            base_environment(),
        )
        line = sandbox.wait_for_line(lambda text: "listening on http://" in text, READY_SECONDS)
        base_url = line.split("listening on ", 1)[1].split()[0]
        while not env_file.exists():  # written just before the line is printed
            time.sleep(0.05)
        env = {**base_environment(), **_sandbox_env(env_file), **TIBRIDGE_ENV}
        return [_one_run(group, number, base_url, env, profile) for number in range(1, runs + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--indicators", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="pyinstrument profile of the run(s) to PATH.html / PATH.txt")
    parser.add_argument("--child-report", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child_report is not None:
        sys.exit(_child(arguments.child_report, arguments.profile))
    profile = arguments.profile.resolve() if arguments.profile else None
    results = measure(arguments.indicators, arguments.runs, profile)
    for number, run in enumerate(results, 1):
        print(
            f"run {number}: {run.ms_per_indicator(arguments.indicators):.3f} ms CPU per indicator "
            f"({run.cpu_seconds:.2f} s after start-up, {run.start_up_cpu_seconds:.2f} s start-up, "
            f"{run.wall_seconds:.1f} s wall, {'reconciled' if run.reconciled else 'NOT RECONCILED'})"
        )
    median = statistics.median(run.ms_per_indicator(arguments.indicators) for run in results)
    print(f"CPU per indicator: {median:.3f} ms (median of {len(results)}, {arguments.indicators} indicators)")
    with contextlib.suppress(OSError):
        print(f"load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    if not all(run.reconciled for run in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
