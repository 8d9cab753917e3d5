"""What the sandbox received, for tests and the benchmark to assert on (GET /_sandbox/stats)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tibridge.sandbox.faults import APIS, Api
from tibridge.sandbox.intel import IntelStore


@dataclass
class LogAnalyticsStats:
    queries: int = 0
    rows_returned: int = 0
    partial_results: int = 0


@dataclass
class GraphStats:
    http_requests: int = 0
    batch_requests: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    lookups: int = 0
    items_429: int = 0


@dataclass
class ThreatStreamStats:
    requests: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)


@dataclass
class Stats:
    requests: dict[Api, Counter[str]] = field(default_factory=lambda: {api: Counter() for api in APIS})
    inside_retry_after: Counter[Api] = field(default_factory=Counter)
    loganalytics: LogAnalyticsStats = field(default_factory=LogAnalyticsStats)
    graph: GraphStats = field(default_factory=GraphStats)
    threatstream: ThreatStreamStats = field(default_factory=ThreatStreamStats)

    def record_status(self, api: Api, status: int | str) -> None:
        self.requests[api][str(status)] += 1

    def to_json(self, intel: IntelStore) -> dict[str, Any]:
        return {
            "requests": {api: dict(sorted(counts.items())) for api, counts in self.requests.items()},
            "inside_retry_after": {api: self.inside_retry_after[api] for api in APIS},
            "loganalytics": {
                "queries": self.loganalytics.queries,
                "rows_returned": self.loganalytics.rows_returned,
                "partial_results": self.loganalytics.partial_results,
            },
            "graph": {
                "http_requests": self.graph.http_requests,
                "batch_requests": self.graph.batch_requests,
                "batch_sizes": {str(size): n for size, n in sorted(self.graph.batch_sizes.items())},
                "lookups": self.graph.lookups,
                "items_429": self.graph.items_429,
            },
            "threatstream": {
                "requests": dict(sorted(self.threatstream.requests.items())),
                "objects": len(intel.objects),
                "active": intel.active,
                "inactive": len(intel.objects) - intel.active,
                "created": intel.created,
                "updated": intel.updated,
                "duplicates_created": intel.duplicates_created,
                "ignored": intel.ignored,
                "import_sessions": len(intel.sessions),
                "pending_approval": intel.pending_approval,
                "batch_sizes": {str(size): n for size, n in sorted(self.threatstream.batch_sizes.items())},
            },
        }
