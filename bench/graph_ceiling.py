"""`python -m bench.graph_ceiling`: does the scorer, on default settings, find a Graph ceiling nobody told it?

Per ceiling: a sandbox process whose Graph answers after `--latency-ms` and takes `ceiling` lookups per second
(its token bucket of one second's worth, 429 + Retry-After beyond), and `ceiling x --seconds` distinct domains
to look up: `--through scorer` (default) sends them as indicators through the scorer as `build` makes it, on
the in-memory bus; `--through graph` asks the scorer's Graph source (`graph_reputations`: client, engine,
batcher) directly, `--outstanding` at a time, which leaves out the per-message work of the bus and the
consumer. The sandbox's answered lookups are sampled every half second.

Reported: lookups per second over the whole run and after the first `--settle` seconds (the climb from the
initial rate), both against the ceiling; 429s; requests inside Retry-After windows; Graph requests against
ceil(lookups / 20); the pacer's peak and final rate; CPU per lookup of this process and of the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import resource
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ceiling_sandbox import Sandbox, sandbox
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import IndicatorCollected, Observable, ObservableType
from tibridge.common.producer import Producer
from tibridge.common.settings import load_settings
from tibridge.common.topology import INDICATORS_TOPIC, TOPOLOGY
from tibridge.scorer.app import build, graph_reputations
from tibridge.scorer.graph_batches import GraphBatcher
from tibridge.scorer.handler import ScorerCounts
from tibridge.scorer.reputation import GraphCounts
from tibridge.scorer.settings import ScorerSettings

SAMPLE_SECONDS = 0.5


def indicators(count: int) -> list[IndicatorCollected]:
    return [
        IndicatorCollected(
            observable=Observable(type=ObservableType.DOMAIN, value=f"h{n}.bench.example"),
            indicator_id=f"indicator--bench-{n}",
            upstream_version="1",
            source_system="Microsoft Defender Threat Intelligence",
            time_generated=datetime(2026, 11, 1, tzinfo=UTC),
            active=True,
        )
        for n in range(count)
    ]


async def sampled(server: Sandbox, lookups: int) -> tuple[float, list[tuple[float, int]]]:
    """Samples the sandbox's answered lookups until `lookups` are; returns the time taken and the samples."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    while True:
        answered = (await server.stats())["graph"]["lookups"]
        samples.append((time.monotonic() - started, answered))
        if answered >= lookups:
            return time.monotonic() - started, samples
        await asyncio.sleep(SAMPLE_SECONDS)


async def through_scorer(settings: ScorerSettings, server: Sandbox, lookups: int) -> tuple[float, Any, GraphCounts]:
    bus = MemoryBus(TOPOLOGY)
    await Producer(bus, SystemClock()).send(INDICATORS_TOPIC, indicators(lookups))
    async with contextlib.AsyncExitStack() as resources:
        service = await build(settings, bus, resources, SystemClock())
        stop = asyncio.Event()
        workers = [asyncio.create_task(worker.run(stop)) for worker in service.workers]
        elapsed, samples = await sampled(server, lookups)
        counts = service.snapshot(ScorerCounts).graph
        stop.set()
        await asyncio.gather(*workers)
    return elapsed, samples, counts


async def through_graph(
    settings: ScorerSettings, server: Sandbox, lookups: int, outstanding: int
) -> tuple[float, Any, GraphCounts]:
    async with contextlib.AsyncExitStack() as resources:
        batcher: GraphBatcher = graph_reputations(settings, resources, SystemClock())
        slots = asyncio.Semaphore(outstanding)

        async def look_up(n: int) -> None:
            async with slots:
                await batcher.lookup(f"h{n}.bench.example")

        asking = asyncio.gather(*(look_up(n) for n in range(lookups)))
        elapsed, samples = await sampled(server, lookups)
        await asking
        return elapsed, samples, batcher.counts()


async def measure(
    ceiling: float, latency_ms: float, seconds: float, settle: float, mode: str, through: str, outstanding: int
) -> dict[str, Any]:
    lookups = round(ceiling * seconds)
    cpu_before, children_before = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    async with sandbox("graph", ceiling, latency_ms) as server:
        settings = load_settings(
            ScorerSettings,
            bus="memory",
            dev_mode=True,
            credential="sandbox",
            graph_base_url=f"{server.base_url}/graph/v1.0",
            graph_lookup_mode=mode,
        )
        if through == "scorer":
            elapsed, samples, graph = await through_scorer(settings, server, lookups)
        else:
            elapsed, samples, graph = await through_graph(settings, server, lookups, outstanding)
        stats = await server.stats()
    cpu, sandbox_cpu = _cpu(resource.RUSAGE_SELF) - cpu_before, _cpu(resource.RUSAGE_CHILDREN) - children_before
    settled = [(moment, answered) for moment, answered in samples if moment >= settle]
    steady = (settled[-1][1] - settled[0][1]) / (settled[-1][0] - settled[0][0]) if len(settled) > 1 else None
    return {
        "ceiling": ceiling,
        "latency_ms": latency_ms,
        "lookup_mode": mode,
        "through": through,
        "lookups": lookups,
        "elapsed_seconds": round(elapsed, 2),
        "lookups_per_second": round(lookups / elapsed, 1),
        "share_of_ceiling": round(lookups / elapsed / ceiling, 3),
        "steady_lookups_per_second": round(steady, 1) if steady else None,
        "steady_share_of_ceiling": round(steady / ceiling, 3) if steady else None,
        "items_429": stats["graph"]["items_429"],
        "inside_retry_after": stats["inside_retry_after"]["graph"],
        "graph_requests": stats["graph"]["http_requests"],
        "graph_floor_requests": math.ceil(lookups / (20 if mode == "batch" else 1)),
        "retries": graph.retries,
        "peak_rate": round(graph.peak_rate),
        "final_rate": round(graph.rate),
        "peak_in_flight": graph.peak_in_flight,
        # Where the machine's time went: this process (scorer or Graph source, plus the sampling) and the sandbox.
        "cpu_ms_per_lookup": round(1000 * cpu / lookups, 3),
        "sandbox_cpu_ms_per_lookup": round(1000 * sandbox_cpu / lookups, 3),
    }


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ceiling", type=float, action="append", help="lookups/s Graph takes (repeatable)")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="run length at the ceiling")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds left out of the steady figure")
    parser.add_argument("--mode", choices=("batch", "single"), default="batch")
    parser.add_argument("--through", choices=("scorer", "graph"), default="scorer")
    parser.add_argument("--outstanding", type=int, default=400, help="lookups asked at once (--through graph)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [
        asyncio.run(
            measure(ceiling, args.latency_ms, args.seconds, args.settle, args.mode, args.through, args.outstanding)
        )
        for ceiling in args.ceiling or [200.0, 1000.0]
    ]
    for result in results:
        print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
