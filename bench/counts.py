"""The one place that reads what the services report about themselves: their typed count snapshots.

A runner writes each built service's `Service.counts()` as its `as_json()`; `read_stage_counts` turns those
back into the snapshot types the services' packages declare (`CollectorCounts`, `ScorerCounts`,
`PublisherCounts`), and `pipeline_counts` sums them over every process that ran a stage (three scorer
processes give three). Nothing else in the benchmark reads a count by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from tibridge.collector.worker import CollectorCounts
from tibridge.common.runtime import Service, ServiceName
from tibridge.publisher.worker import PublisherCounts
from tibridge.scorer.handler import ScorerCounts

# A runner's report: per stage, the JSON of the snapshot of each service of that stage it ran.
CountsJson = Mapping[str, Sequence[Mapping[str, Any]]]

_COLLECTOR = TypeAdapter(CollectorCounts)
_SCORER = TypeAdapter(ScorerCounts)
_PUBLISHER = TypeAdapter(PublisherCounts)


@dataclass(frozen=True)
class StageCounts:
    """Every process's snapshot, per stage, as its package types it."""

    collectors: Sequence[CollectorCounts] = ()
    scorers: Sequence[ScorerCounts] = ()
    publishers: Sequence[PublisherCounts] = ()

    @classmethod
    def of(cls, services: Mapping[ServiceName, Service]) -> StageCounts:
        """The snapshots of services built in this process."""
        collector = services.get(ServiceName.COLLECTOR)
        scorer = services.get(ServiceName.SCORER)
        publisher = services.get(ServiceName.PUBLISHER)
        return cls(
            collectors=[collector.snapshot(CollectorCounts)] if collector else [],
            scorers=[scorer.snapshot(ScorerCounts)] if scorer else [],
            publishers=[publisher.snapshot(PublisherCounts)] if publisher else [],
        )

    def as_json(self) -> dict[str, list[dict[str, Any]]]:
        stages = {
            ServiceName.COLLECTOR: self.collectors,
            ServiceName.SCORER: self.scorers,
            ServiceName.PUBLISHER: self.publishers,
        }
        return {str(stage): [snapshot.as_json() for snapshot in snapshots] for stage, snapshots in stages.items()}


def read_stage_counts(reports: Iterable[CountsJson]) -> StageCounts:
    """The snapshots of every runner's report, typed again."""
    collectors: list[CollectorCounts] = []
    scorers: list[ScorerCounts] = []
    publishers: list[PublisherCounts] = []
    for report in reports:
        collectors += [_COLLECTOR.validate_python(c) for c in report.get(ServiceName.COLLECTOR, ())]
        scorers += [_SCORER.validate_python(s) for s in report.get(ServiceName.SCORER, ())]
        publishers += [_PUBLISHER.validate_python(p) for p in report.get(ServiceName.PUBLISHER, ())]
    return StageCounts(collectors, scorers, publishers)


@dataclass(frozen=True)
class PipelineCounts:
    rows_read: int = 0
    emitted: int = 0  # indicators the collector put on the bus
    windows: int = 0
    queries: int = 0  # Log Analytics reads and counts the collector sent
    scored: int = 0  # verdicts the scorer(s) reached
    publish_verdicts: int = 0
    expire_verdicts: int = 0
    graph_requests: int = 0  # HTTP requests to Graph as the scorer(s) counted them: $batch, single GETs, probes
    graph_batch_requests: int = 0
    graph_retries: int = 0  # lookups sent again (429s included)
    graph_throttled: int = 0  # 429 answers, to a whole request or to one item
    completed: int = 0  # messages the publisher settled after ThreatStream accepted them
    publisher_requests: int = 0
    publisher_batches: int = 0
    published: int = 0  # observables in accepted upserts and import sessions
    dead_lettered: int = 0
    held: int = 0  # messages the publisher still held when it stopped
    dead_lettered_by_reason: Mapping[str, int] = field(default_factory=dict)

    @property
    def lanes(self) -> int:
        """Direct mode's request lanes that carried anything: a publish and an expire batch never share one."""
        return (self.publish_verdicts > 0) + (self.expire_verdicts > 0)


def pipeline_counts(stages: StageCounts) -> PipelineCounts:
    reasons: dict[str, int] = {}
    for publisher in stages.publishers:
        for reason, n in publisher.dead_lettered_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    collectors, scorers, publishers = stages.collectors, stages.scorers, stages.publishers
    return PipelineCounts(
        rows_read=sum(c.rows_read for c in collectors),
        emitted=sum(c.emitted for c in collectors),
        windows=sum(c.windows for c in collectors),
        queries=sum(c.queries for c in collectors),
        scored=sum(s.verdicts.scored for s in scorers),
        publish_verdicts=sum(sum(s.verdicts.publish.values()) for s in scorers),
        expire_verdicts=sum(sum(s.verdicts.expire.values()) for s in scorers),
        graph_requests=sum(s.graph.requests for s in scorers),
        graph_batch_requests=sum(s.graph.batch_requests for s in scorers),
        graph_retries=sum(s.graph.retries for s in scorers),
        graph_throttled=sum(s.graph.throttled for s in scorers),
        completed=sum(p.completed for p in publishers),
        publisher_requests=sum(p.requests for p in publishers),
        publisher_batches=sum(p.batches for p in publishers),
        published=sum(p.published for p in publishers),
        dead_lettered=sum(p.dead_lettered for p in publishers),
        held=sum(p.held for p in publishers),
        dead_lettered_by_reason=reasons,
    )
