"""What the scorer has done: JSON-able counters for `Service.counts`, mirrored to OpenTelemetry metrics.

Attributes carry verdicts, reasons and classifications only: never an indicator value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from opentelemetry import metrics

from tibridge.common.contracts import IndicatorScored

_meter = metrics.get_meter("tibridge.scorer")
_verdicts = _meter.create_counter("tibridge.scorer.verdicts", description="Indicators scored, by verdict and reason")
_lookups = _meter.create_counter("tibridge.scorer.lookups", description="Reputation lookups, by cache outcome")
_graph_requests = _meter.create_counter("tibridge.scorer.graph.requests", description="Graph $batch HTTP requests")
_graph_batch_size = _meter.create_histogram("tibridge.scorer.graph.batch_size", description="Items per $batch")
_graph_throttled = _meter.create_counter("tibridge.scorer.graph.throttled", description="429 answers honoured")
_graph_retries = _meter.create_counter("tibridge.scorer.graph.retries", description="Lookups retried, by cause")


class ScorerCounts:
    def __init__(self) -> None:
        self.verdicts: Counter[str] = Counter()
        self.classifications: Counter[str] = Counter()
        self.cache: Counter[str] = Counter()
        self.graph: Counter[str] = Counter()
        self.abandoned = 0

    def scored(self, scored: IndicatorScored) -> None:
        self.verdicts[f"{scored.verdict}/{scored.reason}"] += 1
        if scored.reputation is not None:
            self.classifications[str(scored.reputation.classification)] += 1
        _verdicts.add(1, {"verdict": str(scored.verdict), "reason": scored.reason})

    def lookup(self, outcome: str) -> None:
        """`hit`, `miss` (a Graph lookup) or `shared` (joined a lookup already under way)."""
        self.cache[outcome] += 1
        _lookups.add(1, {"outcome": outcome})

    def graph_request(self, items: int) -> None:
        self.graph["batch_requests"] += 1
        self.graph["items"] += items
        _graph_requests.add(1)
        _graph_batch_size.record(items)

    def throttled(self) -> None:
        self.graph["throttled"] += 1
        _graph_throttled.add(1)

    def retried(self, cause: str) -> None:
        self.graph["retries"] += 1
        _graph_retries.add(1, {"cause": cause})

    def snapshot(self) -> dict[str, Any]:
        return {
            "verdicts": dict(self.verdicts),
            "classifications": dict(self.classifications),
            "cache": {"hits": self.cache["hit"], "misses": self.cache["miss"], "shared": self.cache["shared"]},
            "graph": {name: self.graph[name] for name in ("batch_requests", "items", "throttled", "retries")},
            "abandoned": self.abandoned,
        }
