"""tibridge as the benchmark runs it: one child process per role, settings from the environment as the CLI
takes them, and on exit a JSON report of what the services counted, sampled once a second.

    python -m bench.runner pipeline --report R.json    # `tibridge run --once` on the in-memory bus
    python -m bench.runner collector --report R.json   # `tibridge collector --once`
    python -m bench.runner scorer --report R.json      # `tibridge scorer`, until SIGTERM
    python -m bench.runner publisher --report R.json   # `tibridge publisher`, until SIGTERM

It prints `started` on stdout once the services are built and about to serve; start-up before that
(interpreter, imports, settings) is reported as `cpu_seconds_at_start`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.counts import StageCounts, pipeline_counts
from bench.processes import peak_rss_mib
from tibridge.cli.commands import run_pipeline
from tibridge.cli.registry import SERVICES
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.runtime import Service, ServiceName, ServiceSpec, run_service
from tibridge.common.settings import BusKind

SAMPLE_SECONDS = 1.0
PIPELINE = "pipeline"
ROLES = (PIPELINE, *(str(name) for name in ServiceName))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """Watches the built services: when they started, and their progress once a second."""

    def __init__(self) -> None:
        self.services: dict[ServiceName, Service] = {}
        self.started_monotonic: float | None = None
        self.cpu_seconds_at_start: float | None = None
        self.timeline: list[list[float]] = []

    def built(self, services: Mapping[ServiceName, Service]) -> None:
        self.services.update(services)
        self.started_monotonic = time.monotonic()
        self.cpu_seconds_at_start = _cpu_seconds()
        print("started", flush=True)

    def counts(self) -> StageCounts:
        return StageCounts.of(self.services)

    async def sample(self) -> None:
        while True:
            if self.started_monotonic is not None:
                progress = pipeline_counts(self.counts())
                self.timeline.append(
                    [round(time.monotonic(), 3), progress.emitted, progress.scored, progress.completed]
                )
            await asyncio.sleep(SAMPLE_SECONDS)

    def report(self, role: str, exit_code: int) -> dict[str, Any]:
        return {
            "role": role,
            "exit_code": exit_code,
            "started_monotonic": self.started_monotonic,
            "finished_monotonic": time.monotonic(),
            "cpu_seconds_at_start": self.cpu_seconds_at_start,
            "cpu_seconds_at_finish": _cpu_seconds(),
            "peak_rss_mib": peak_rss_mib(),
            "counts": self.counts().as_json(),
            "timeline": self.timeline,
        }


def _watched(spec: ServiceSpec[Any], recorder: Recorder) -> ServiceSpec[Any]:
    """The registry's spec of the service, telling `recorder` once it is built."""

    async def build_and_watch(settings: Any, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
        service = await spec.build(settings, bus, resources, clock)
        recorder.built({spec.name: service})
        return service

    return dataclasses.replace(spec, build=build_and_watch)


async def run_role(role: str, recorder: Recorder) -> int:
    """Each role runs as its CLI command runs it: the registry's spec, or the all-in-one composition."""
    if role == PIPELINE:
        return await run_pipeline(bus=BusKind.MEMORY, once=True, since=None, on_built=recorder.built)
    name = ServiceName(role)
    values = {"collector_mode": "once"} if name is ServiceName.COLLECTOR else {}
    return await run_service(_watched(SERVICES[name], recorder), **values)


async def _main(role: str, recorder: Recorder) -> int:
    sampler = asyncio.create_task(recorder.sample())
    try:
        return await run_role(role, recorder)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--report", type=Path, required=True)
    arguments = parser.parse_args()
    recorder = Recorder()
    code = 1
    try:
        code = asyncio.run(_main(arguments.role, recorder))
    finally:
        report = recorder.report(arguments.role, code)
        arguments.report.write_text(json.dumps(report) + "\n", encoding="utf-8")
    sys.exit(code)


if __name__ == "__main__":
    main()
