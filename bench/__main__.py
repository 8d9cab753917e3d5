"""`make bench` / `python -m bench`: end-to-end runs against the sandbox, numbers into bench/results/.

Scenarios: `clean` (latency only) and `storm` (Graph 429s and a rate ceiling, ThreatStream 5xx). Each run
reports indicators per second, Graph requests against the floor of ceil(unique observables / 20),
ThreatStream requests against batches, 429s honoured, requests inside Retry-After windows and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from tibridge.cli.demo import DEMO_FAULTS, demo

SCENARIOS: dict[str, dict[str, Any]] = {
    "clean": DEMO_FAULTS,
    "storm": {
        "graph": {"p429": 0.15, "retry_after_seconds": 1, "rate_ceiling": 200, "p503": 0.02},
        "threatstream": {"latency_ms": 40, "p503": 0.05},
        "loganalytics": {"latency_ms": 20},
    },
}
RESULTS = Path(__file__).parent / "results"


async def run(scenario: str, indicators: int, mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        result = await demo(
            indicators=indicators,
            seed=7,
            out=Path(out),
            mode=mode,
            console=Console(quiet=True),
            faults=SCENARIOS[scenario],
        )
    s, counts = result.summary, result.counts
    elapsed = s["run"]["elapsed_seconds"]
    return {
        "scenario": scenario,
        "indicators": indicators,
        "threatstream_mode": mode,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reconciled": result.reconciled,
        "problems": result.problems,
        "elapsed_seconds": elapsed,
        "messages_emitted": counts.collector.emitted,
        "messages_per_second": round(counts.collector.emitted / elapsed, 1) if elapsed else None,
        "graph_http_requests": s["graph"]["http_requests"],
        "graph_floor_requests": s["graph"]["floor_requests"],
        "graph_unique_observables": s["graph"]["unique_scorable_observables"],
        "graph_429_honoured": counts.scorer.graph.throttled,
        "threatstream_requests": counts.publisher.requests,
        "threatstream_batches": counts.publisher.batches,
        "inside_retry_after": s["inside_retry_after"],
        "duplicates_created": s["threatstream"]["duplicates_created"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--indicators", type=int, default=10_000)
    parser.add_argument("--mode", choices=["approval", "direct"], default="direct")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    console = Console()
    for scenario in args.scenario or sorted(SCENARIOS):
        numbers = asyncio.run(run(scenario, args.indicators, args.mode))
        path = RESULTS / f"{scenario}-{args.indicators}-{args.mode}.json"
        path.write_text(json.dumps(numbers, indent=2) + "\n")
        console.print_json(data=numbers)
        console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
