"""What the sandbox received, for tests and the benchmark to assert on (GET /_sandbox/stats)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tibridge.sandbox.faults import APIS, Api
from tibridge.sandbox.intel import IntelStore


@dataclass
class LogAnalyticsStats:
    queries: int = 0
    count_queries: int = 0
    rows_returned: int = 0
    partial_results: int = 0
    no_content: int = 0
    peak_concurrent: int = 0  # queries in flight at once, at most (the limit refuses beyond it)


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
    # Faults the injector decided on (whole requests and Graph batch items), by kind: what a test survived.
    faults_injected: dict[Api, Counter[str]] = field(default_factory=lambda: {api: Counter() for api in APIS})
    loganalytics: LogAnalyticsStats = field(default_factory=LogAnalyticsStats)
    graph: GraphStats = field(default_factory=GraphStats)
    threatstream: ThreatStreamStats = field(default_factory=ThreatStreamStats)

    def record_status(self, api: Api, status: int | str) -> None:
        self.requests[api][str(status)] += 1

    def to_json(self, intel: IntelStore) -> dict[str, Any]:
        return {
            "requests": {api: dict(sorted(counts.items())) for api, counts in self.requests.items()},
            "inside_retry_after": {api: self.inside_retry_after[api] for api in APIS},
            "faults_injected": {api: dict(sorted(counts.items())) for api, counts in self.faults_injected.items()},
            "loganalytics": asdict(self.loganalytics),
            "graph": {
                "http_requests": self.graph.http_requests,
                "batch_requests": self.graph.batch_requests,
                "batch_sizes": {str(size): n for size, n in sorted(self.graph.batch_sizes.items())},
                "lookups": self.graph.lookups,
                "items_429": self.graph.items_429,
            },
            "threatstream": self._threatstream(intel),
        }

    def _threatstream(self, intel: IntelStore) -> dict[str, Any]:
        """`objects`, `active`, `inactive` and the write counts are about what tibridge wrote; `foreign` proves
        the entries seeded before the run unchanged."""
        ours = list(intel.ours())
        active = sum(1 for obj in ours if obj.status == "active")
        counts = intel.counts
        sessions = intel.sessions.values()
        changed = intel.foreign_changed()
        return {
            "requests": dict(sorted(self.threatstream.requests.items())),
            "objects": len(ours),
            "active": active,
            "inactive": len(ours) - active,
            "created": counts.created,
            "updated": counts.updated,
            "duplicates_created": counts.duplicates_created,
            "created_inactive": sum(1 for obj in ours if not obj.was_active),
            "ignored": sum(counts.ignored.values()),
            "ignored_reasons": {str(reason): n for reason, n in sorted(counts.ignored.items())},
            "import_sessions": len(intel.sessions),
            "sessions_by_status": dict(sorted(Counter(str(s.status) for s in sessions).items())),
            "session_observables_accepted": sum(len(s.accepted) for s in sessions),
            "session_observables_rejected": sum(len(s.rejected) for s in sessions),
            "pending_approval": intel.pending_approval,
            "foreign": {
                "seeded": len(intel.foreign_fingerprints),
                "unchanged": len(intel.foreign_fingerprints) - len(changed),
                "changed": changed,
                "written_by_tibridge": counts.foreign_written,
            },
            "whitelist": len(intel.rules.whitelist),
            "batch_sizes": {str(size): n for size, n in sorted(self.threatstream.batch_sizes.items())},
        }
