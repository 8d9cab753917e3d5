"""The one place that reads what the services report about themselves.

Today a service's public count summary is the dict its `Service.counts()` returns (see
`tibridge.cli.demo`); typed snapshots are on their way (issue 14). Everything in the benchmark goes through
`pipeline_counts`, so that change touches this function only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Per stage, the count summaries of every process that ran it (three scorer processes give three).
StageCounts = Mapping[str, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class PipelineCounts:
    rows_read: int
    emitted: int  # indicators the collector put on the bus
    windows: int
    scored: int  # verdicts the scorer(s) reached
    graph_retries: int  # lookups retried (429s included)
    graph_throttled: int  # 429 answers honoured
    completed: int  # messages the publisher settled after ThreatStream accepted them
    publisher_requests: int
    publisher_batches: int
    dead_lettered: int
    held: int  # messages the publisher still held when it stopped
    verdicts: Mapping[str, int]  # "publish/<reason>" → count, summed over scorers


def pipeline_counts(stages: StageCounts) -> PipelineCounts:
    collector = stages.get("collector", ())
    scorers = stages.get("scorer", ())
    publishers = stages.get("publisher", ())
    verdicts: dict[str, int] = {}
    for scorer in scorers:
        for key, n in scorer.get("verdicts", {}).items():
            verdicts[key] = verdicts.get(key, 0) + int(n)

    def total(summaries: Sequence[Mapping[str, Any]], *path: str) -> int:
        found = 0
        for summary in summaries:
            value: Any = summary
            for key in path:
                value = value.get(key, {}) if isinstance(value, Mapping) else {}
            found += int(value) if isinstance(value, int | float) else 0
        return found

    return PipelineCounts(
        rows_read=total(collector, "rows_read"),
        emitted=total(collector, "emitted"),
        windows=total(collector, "windows"),
        scored=sum(verdicts.values()),
        graph_retries=total(scorers, "graph", "retries"),
        graph_throttled=total(scorers, "graph", "throttled"),
        completed=total(publishers, "completed"),
        publisher_requests=total(publishers, "requests"),
        publisher_batches=total(publishers, "batches"),
        dead_lettered=total(publishers, "dead_lettered"),
        held=total(publishers, "held"),
        verdicts=verdicts,
    )
