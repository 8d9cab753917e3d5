"""CPU per indicator of the all-in-one run: `tibridge run --once` on the in-memory bus, with the sandbox in a
process of its own and every API latency at zero, so what is measured is tibridge's own work.

    python -m bench.cpu                                  # 10,000 indicators, 3 runs, the median
    python -m bench.cpu --indicators 2000 --runs 1
    python -m bench.cpu --runs 1 --profile stacks        # + where the CPU goes: stacks (collapsed), stacks.txt

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
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

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


def _system_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


class CpuSampler:
    """Where the process spends its CPU: the main thread's stack every `interval` seconds of CPU time (SIGPROF),
    so waiting costs nothing and, unlike a wall-clock profiler, other processes on the machine do not skew it."""

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self.stacks: Counter[tuple[str, ...]] = Counter()

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self._interval, self._interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_DFL)

    def _sample(self, _: int, frame: FrameType | None) -> None:
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_qualname} ({_short(code.co_filename)})")
            frame = frame.f_back
        self.stacks[tuple(reversed(stack))] += 1

    def write(self, path: Path, top: int = 40) -> None:
        """PATH: collapsed stacks (flamegraph.pl, speedscope); PATH.txt: the top functions, inclusive and self."""
        path.write_text(
            "".join(f"{';'.join(stack)} {count}\n" for stack, count in self.stacks.most_common()), encoding="utf-8"
        )
        total = sum(self.stacks.values()) or 1
        inclusive: Counter[str] = Counter()
        itself: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            for function in set(stack):
                inclusive[function] += count
            itself[stack[-1]] += count
        lines = [f"{total} samples, one per {self._interval * 1000:g} ms of CPU", "", "inclusive:"]
        lines += [f"{100 * n / total:6.1f} %  {function}" for function, n in inclusive.most_common(top)]
        lines += ["", "self:"]
        lines += [f"{100 * n / total:6.1f} %  {function}" for function, n in itself.most_common(top)]
        path.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _short(filename: str) -> str:
    """A source file as a profile names it: from the package directory on."""
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    return filename


def _child(report: Path, profile: Path | None) -> int:
    """In the measured process: one `tibridge run --once`, CPU counted from the services being built."""
    from tibridge.cli.commands import run_pipeline
    from tibridge.common.settings import BusKind

    marks: dict[str, float] = {}
    sampler = CpuSampler() if profile is not None else None

    def built(_: object) -> None:
        marks["cpu_at_start"] = _cpu_seconds()
        marks["system_at_start"] = _system_seconds()
        marks["wall_at_start"] = time.monotonic()
        if sampler is not None:
            sampler.start()

    code = asyncio.run(run_pipeline(bus=BusKind.MEMORY, once=True, since=None, on_built=built))
    marks["cpu_at_finish"] = _cpu_seconds()
    marks["system_at_finish"] = _system_seconds()
    marks["wall_at_finish"] = time.monotonic()
    if sampler is not None and profile is not None:
        sampler.stop()
        sampler.write(profile)
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
    parser.add_argument("--profile", type=Path, help="sample CPU: collapsed stacks to PATH, a summary to PATH.txt")
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
    per_indicator = [run.ms_per_indicator(arguments.indicators) for run in results]
    # Other work on the machine only ever adds CPU time (shared caches, switches): the least run is the truest.
    print(
        f"CPU per indicator: {min(per_indicator):.3f} ms, least of {len(results)} runs "
        f"(median {statistics.median(per_indicator):.3f} ms; {arguments.indicators} indicators)"
    )
    with contextlib.suppress(OSError):
        print(f"load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    if not all(run.reconciled for run in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
