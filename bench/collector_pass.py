"""`python -m bench.collector_pass`: the collector's own passes against the sandbox's Log Analytics, 1 s per query.

Two passes of the collector as `tibridge collector` composes it (real clock, the strict sandbox's limits), on the
in-memory bus with a consumer that completes every message at once, so the times are the collector's alone:
the first pass (the 14-day backfill of an empty checkpoint) and a steady pass five minutes later. Each reports
the queries the sandbox answered (and how many were counts), the most it ran at once, 429s, requests inside
Retry-After windows and the pass's wall time. JSON into bench/results/collector-passes-<indicators>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tibridge.collector.app import build
from tibridge.collector.settings import CollectorSettings
from tibridge.collector.worker import Collector
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.clock import SystemClock
from tibridge.common.settings import from_environment, load_settings
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION
from tibridge.sandbox import SandboxConfig, SandboxServer

RESULTS = Path(__file__).parent / "results"
STEADY_AFTER = timedelta(minutes=5)


class ShiftedClock(SystemClock):
    """The system clock, `offset` ahead: a pass 'five minutes later' without waiting five minutes."""

    def __init__(self, offset: timedelta) -> None:
        self._offset = offset

    def now(self) -> datetime:
        return super().now() + self._offset


@contextlib.asynccontextmanager
async def downstream(bus: MemoryBus) -> AsyncIterator[None]:
    """A consumer that completes every indicator at once (the collector waits for that on this bus)."""
    stopping = asyncio.Event()

    async def consume() -> None:
        async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            while not (stopping.is_set() and not bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)):
                for message in await receiver.receive(max_messages=500, max_wait=0.05):
                    await receiver.complete(message)

    task = asyncio.create_task(consume())
    try:
        yield
    finally:
        stopping.set()
        await task


async def one_pass(server: SandboxServer, bus: MemoryBus, checkpoint: Path, offset: timedelta) -> dict[str, Any]:
    stats = server.state.stats
    before = (stats.loganalytics.queries, stats.loganalytics.count_queries, stats.requests["loganalytics"]["429"])
    inside_before = stats.inside_retry_after["loganalytics"]
    settings = load_settings(
        CollectorSettings, **{**from_environment(server.env()), "bus": "memory", "checkpoint_path": checkpoint}
    )
    async with contextlib.AsyncExitStack() as resources, downstream(bus):
        service = await build(settings, bus, resources, ShiftedClock(offset))
        [worker] = service.workers
        assert isinstance(worker, Collector)
        started = time.perf_counter()
        await worker.run(asyncio.Event())
        elapsed = time.perf_counter() - started
    counts = worker.counts()
    return {
        "queries": stats.loganalytics.queries - before[0],
        "count_queries": stats.loganalytics.count_queries - before[1],
        "throttled_429": stats.requests["loganalytics"]["429"] - before[2],
        "inside_retry_after": stats.inside_retry_after["loganalytics"] - inside_before,
        "peak_concurrent_so_far": stats.loganalytics.peak_concurrent,
        "windows": counts.windows,
        "rows_read": counts.rows_read,
        "emitted": counts.emitted,
        "seconds": round(elapsed, 2),
    }


async def measure(indicators: int, seed: int, latency_ms: int) -> dict[str, Any]:
    config = SandboxConfig(indicators=indicators, seed=seed, faults={"loganalytics": {"latency_ms": latency_ms}})
    async with SandboxServer(config) as server:
        with tempfile.TemporaryDirectory() as work:
            bus = MemoryBus()
            checkpoint = Path(work) / "checkpoint.json"
            first = await one_pass(server, bus, checkpoint, timedelta(0))
            steady = await one_pass(server, bus, checkpoint, STEADY_AFTER)
        return {
            "indicators": indicators,
            "rows_in_table": len(server.dataset.rows),
            "seed": seed,
            "loganalytics_latency_ms": latency_ms,
            "backfill": first,
            "steady": steady,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--indicators", type=int, action="append", help="default: 5000 (the demo's) and 10000")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-ms", type=int, default=1000)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    table = Table("indicators", "rows", "pass", "queries (counts)", "peak at once", "429s", "inside Retry-After", "s")
    for indicators in args.indicators or [5000, 10_000]:
        numbers = asyncio.run(measure(indicators, args.seed, args.latency_ms))
        (RESULTS / f"collector-passes-{indicators}.json").write_text(json.dumps(numbers, indent=2) + "\n")
        for name in ("backfill", "steady"):
            run = numbers[name]
            table.add_row(
                f"{indicators:,}",
                f"{numbers['rows_in_table']:,}",
                name,
                f"{run['queries']} ({run['count_queries']})",
                str(run["peak_concurrent_so_far"]),
                str(run["throttled_429"]),
                str(run["inside_retry_after"]),
                f"{run['seconds']:.2f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
