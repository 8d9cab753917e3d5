"""`python -m bench.threatstream_ceiling`: does the publisher's ThreatStream client, on default settings, find a
ThreatStream ceiling nobody told it?

Per ceiling: a sandbox process whose ThreatStream answers after `--latency-ms` and takes `ceiling` requests per
second (its token bucket of one second's worth, 429 + Retry-After beyond), and the publisher's client as
`gateway_for` builds it (its one engine: adaptive pacer, retry budget) sending `ceiling x --seconds` reads of
what tibridge owns (`GET v2/intelligence/`), one at a time as the publisher's delivery loop sends its requests.
The rate starts at TIBRIDGE_THREATSTREAM_INITIAL_RATE_PER_SECOND and has no cap (TIBRIDGE_THREATSTREAM_RATE_PER_SECOND
unset). One request at a time cannot beat the latency: `1000 / latency_ms` requests per second is the most any
client gets, so keep the latency well below `1000 / ceiling`.

Reported: requests answered per second over the whole run and after the first `--settle` seconds (the climb from
the initial rate), both against the ceiling; 429s; requests inside Retry-After windows; the pacer's peak and final
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from bench.ceiling_sandbox import sandbox
from tibridge.common.clock import SystemClock
from tibridge.common.settings import load_settings
from tibridge.publisher.app import gateway_for
from tibridge.publisher.payloads import owned_search
from tibridge.publisher.settings import PublisherSettings
from tibridge.publisher.threatstream import Outcome


async def measure(ceiling: float, latency_ms: float, seconds: float, settle: float) -> dict[str, Any]:
    requests = round(ceiling * seconds)
    async with sandbox("threatstream", ceiling, latency_ms) as server, contextlib.AsyncExitStack() as resources:
        settings = load_settings(
            PublisherSettings,
            bus="memory",
            dev_mode=True,
            threatstream_base_url=f"{server.base_url}/threatstream/api",
            threatstream_username="sandbox",
            threatstream_api_key="sandbox-api-key",
        )
        gateway = gateway_for(settings, resources, SystemClock())
        request = owned_search(settings.publisher.owner_tag, None)
        started = time.monotonic()
        answered: list[float] = []
        for _ in range(requests):
            if (await gateway.send(request)).outcome is Outcome.ACCEPTED:
                answered.append(time.monotonic() - started)
        elapsed = time.monotonic() - started
        stats = await server.stats()
        counts = gateway.counts()
    settled = [moment for moment in answered if moment >= settle]
    steady = len(settled) / (elapsed - settle) if elapsed > settle else None
    pace = counts.pace
    return {
        "ceiling": ceiling,
        "latency_ms": latency_ms,
        "requests": requests,
        "answered": len(answered),
        "elapsed_seconds": round(elapsed, 2),
        "requests_per_second": round(len(answered) / elapsed, 2),
        "share_of_ceiling": round(len(answered) / elapsed / ceiling, 3),
        "steady_requests_per_second": round(steady, 2) if steady else None,
        "steady_share_of_ceiling": round(steady / ceiling, 3) if steady else None,
        "responses_429": stats["requests"]["threatstream"].get("429", 0),
        "inside_retry_after": stats["inside_retry_after"]["threatstream"],
        "http_requests": counts.requests,
        "retries": counts.retries,
        "peak_rate": round(pace.peak_rate, 1) if pace else None,
        "final_rate": round(pace.rate, 1) if pace else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ceiling", type=float, action="append", help="requests/s ThreatStream takes (repeatable)")
    parser.add_argument("--latency-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="run length at the ceiling")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds left out of the steady figure")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = [
        asyncio.run(measure(ceiling, args.latency_ms, args.seconds, args.settle)) for ceiling in args.ceiling or [5, 20]
    ]
    for result in results:
        print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
