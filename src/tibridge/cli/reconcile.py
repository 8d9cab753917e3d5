"""`tibridge reconcile`: Sentinel's active MDTI indicators after normalisation and the verdict rules (desired) against
what tibridge owns in ThreatStream (actual); counts and samples of missing, stale-active and unexpected objects,
and with `--repair` the differences sent through the publisher as messages on the `scored` topic.

On Service Bus the running publisher applies them; on the in-memory bus (`TIBRIDGE_BUS=memory`, where no publisher
outlives its process) this command runs the publisher itself until they are settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer

from tibridge.cli.pipeline import is_idle, load_pipeline_settings
from tibridge.cli.state import (
    Scoring,
    StateError,
    newest_per_indicator,
    normalise_rows,
    pipeline_parts,
    read_owned,
    read_sentinel,
    read_whitelist,
    reading_gateway,
    sentinel_span,
)
from tibridge.collector.windows import Window
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.contracts import IndicatorScored, Verdict
from tibridge.common.producer import Producer
from tibridge.common.runtime import ServiceName, bus_from_settings, serve
from tibridge.common.settings import BusKind
from tibridge.common.topology import SCORED_TOPIC
from tibridge.publisher.app import SPEC as PUBLISHER
from tibridge.publisher.reconciliation import Drift, desired_state, diff, repairs
from tibridge.publisher.settings import PublisherSettings, PublishMode

EXIT_IN_SYNC = 0
EXIT_DRIFT = 1
EXIT_UNREADABLE = 4
_IDLE_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Reconciliation:
    window: Window
    rows: int
    indicators: int
    desired: dict[str, int]  # values per verdict
    owned: int
    pages: int
    lookups: int
    graph_requests: int
    drift: Drift
    samples: int
    approval_mode: bool = False

    def to_json(self) -> dict[str, Any]:
        drift = self.drift
        return {
            "sentinel": {
                "from": self.window.start.isoformat(),
                "to": self.window.end.isoformat(),
                "rows": self.rows,
                "indicators": self.indicators,
                "values_by_verdict": self.desired,
                "graph_lookups": self.lookups,
                "graph_requests": self.graph_requests,
            },
            "threatstream": {"objects_of_ours": self.owned, "pages_read": self.pages},
            "in_sync": drift.in_sync,
            "false_positive": drift.false_positive,
            "whitelisted": drift.whitelisted,
            "settling": drift.settling,
            "missing": {
                "count": len(drift.missing),
                "samples": [s.observable.value for s in drift.missing][: self.samples],
            },
            "stale_active": {
                "count": len(drift.stale),
                "samples": [
                    {"value": s.scored.observable.value, "upstream": s.scored.reason, "ids": [o.id for o in s.active]}
                    for s in drift.stale[: self.samples]
                ],
            },
            "unexpected": {
                "count": len(drift.unexpected),
                "samples": [
                    {"value": u.obj.value, "id": u.obj.id, "itype": u.obj.itype, "why": u.why}
                    for u in drift.unexpected[: self.samples]
                ],
            },
        }

    def lines(self) -> list[str]:
        report = self.to_json()
        drift = self.drift
        out = [
            f"Sentinel {report['sentinel']['from']} → {report['sentinel']['to']}: {self.rows} rows, {self.indicators} "
            f"indicators, {sum(self.desired.values())} values ("
            + ", ".join(f"{verdict} {count}" for verdict, count in self.desired.items())
            + f"), {self.lookups} Graph lookups in {self.graph_requests} requests",
            f"ThreatStream: {self.owned} objects of ours (active or false positive) in {self.pages} pages",
            f"in sync {drift.in_sync}, analyst's false positive {drift.false_positive}, on the organisation's "
            f"whitelist {drift.whitelisted}, settling {drift.settling}",
            f"missing {len(drift.missing)}, stale-active {len(drift.stale)}, unexpected {len(drift.unexpected)}",
        ]
        if drift.missing and self.approval_mode:
            out.append(
                "  (approval mode: a missing value may be waiting in an import session for an analyst; "
                "ThreatStream's search does not show those)"
            )
        out += [f"  missing: {value}" for value in report["missing"]["samples"]]
        out += [
            f"  stale-active: {item['value']} (upstream {item['upstream']}; active ids {item['ids']})"
            for item in report["stale_active"]["samples"]
        ]
        out += [
            f"  unexpected: {item['value']} (id {item['id']}, {item['itype']}: {item['why']})"
            for item in report["unexpected"]["samples"]
        ]
        return out

    def markdown(self) -> str:
        report = self.to_json()
        rows = [
            "# tibridge reconcile",
            "",
            f"Sentinel from {report['sentinel']['from']} to {report['sentinel']['to']}: {self.rows} rows, "
            f"{self.indicators} indicators; ThreatStream: {self.owned} objects of ours in {self.pages} pages; "
            f"{self.lookups} Graph lookups in {self.graph_requests} requests.",
            "",
            "| | values |",
            "|---|---|",
            *(f"| desired: {verdict} | {count} |" for verdict, count in self.desired.items()),
            f"| in sync | {self.drift.in_sync} |",
            f"| analyst's false positive (left alone) | {self.drift.false_positive} |",
            f"| on the organisation's whitelist (ThreatStream refuses them) | {self.drift.whitelisted} |",
            f"| settling (changed in the last TIBRIDGE_RECONCILE_SETTLE_SECONDS) | {self.drift.settling} |",
            f"| **missing** | {len(self.drift.missing)} |",
            f"| **stale-active** | {len(self.drift.stale)} |",
            f"| **unexpected** | {len(self.drift.unexpected)} |",
            "",
        ]
        if self.drift.differences:
            rows += ["| kind | value | detail |", "|---|---|---|"]
            rows += [f"| missing | `{value}` | |" for value in report["missing"]["samples"]]
            rows += [
                f"| stale-active | `{item['value']}` | upstream {item['upstream']}; ids {item['ids']} |"
                for item in report["stale_active"]["samples"]
            ]
            rows += [
                f"| unexpected | `{item['value']}` | id {item['id']}, {item['itype']}: {item['why']} |"
                for item in report["unexpected"]["samples"]
            ]
            rows.append("")
        return "\n".join(rows)


async def reconcile(clock: Clock, values: dict[str, Any] | None = None) -> tuple[Reconciliation, PublisherSettings]:
    settings = load_pipeline_settings({"health_port": 0, **(values or {})})
    collecting, scoring_settings, publishing = pipeline_parts(settings)
    async with contextlib.AsyncExitStack() as resources:
        window = await sentinel_span(collecting, resources, clock)
        read = await read_sentinel(collecting, window, resources, clock)
        now = clock.now()
        indicators = newest_per_indicator(normalise_rows(collecting, read.rows, now))
        scoring = Scoring(scoring_settings, resources, clock)
        desired = desired_state(await scoring.score_all(indicators))
        gateway = reading_gateway(publishing, resources, clock)
        owned = await read_owned(publishing, gateway)
        whitelist = await read_whitelist(publishing, gateway)
        settled_before = now - timedelta(seconds=publishing.reconcile.settle_seconds)
        drift = diff(desired, owned.objects, settled_before=settled_before, whitelist=whitelist)
        by_verdict = {str(verdict): sum(s.verdict is verdict for s in desired.values()) for verdict in Verdict}
        result = Reconciliation(
            window,
            len(read.rows),
            len(indicators),
            by_verdict,
            len(owned.objects),
            owned.pages,
            scoring.lookups,
            scoring.requests,
            drift,
            publishing.reconcile.samples,
            approval_mode=publishing.publisher.mode is PublishMode.APPROVAL,
        )
    return result, publishing


async def run_reconcile(*, repair: bool, as_json: bool, report: Path | None, clock: Clock | None = None) -> int:
    clock = clock or SystemClock()
    try:
        result, publishing = await reconcile(clock)
    except StateError as error:
        typer.echo(f"error: {error}", err=True)
        return EXIT_UNREADABLE
    if report is not None:
        await asyncio.to_thread(report.write_text, result.markdown(), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.drift.differences:
        return EXIT_IN_SYNC
    if not repair:
        return EXIT_DRIFT
    messages = repairs(result.drift, clock.now())
    said = await send_repairs(publishing, messages, clock)
    typer.echo(said, err=as_json)
    return EXIT_IN_SYNC


async def send_repairs(settings: PublisherSettings, messages: list[IndicatorScored], clock: Clock) -> str:
    """Publishes the repairs on `scored`; on the in-memory bus also runs the publisher until they are settled."""
    async with contextlib.AsyncExitStack() as resources:
        bus = await bus_from_settings(settings, resources)
        if settings.bus is BusKind.SERVICEBUS:
            await Producer(bus, clock).send(SCORED_TOPIC, messages)
            return f"repair: sent {len(messages)} messages to topic {SCORED_TOPIC}; the publisher applies them"
        service = await PUBLISHER.build(settings, bus, resources, clock)
        await Producer(bus, clock).send(SCORED_TOPIC, messages)
        stop = asyncio.Event()

        async def until_settled() -> None:
            while not stop.is_set():
                if await is_idle(bus, {ServiceName.PUBLISHER: service}):
                    stop.set()
                await asyncio.sleep(_IDLE_POLL_SECONDS)

        watcher = asyncio.create_task(until_settled())
        try:
            await serve(settings, bus, [service], stop=stop, name="tibridge-reconcile")
        finally:
            watcher.cancel()
    counts = service.counts().as_json()
    done = ", ".join(f"{name} {counts.get(name, 0)}" for name in _REPAIR_COUNTS)
    return (
        f"repair: {len(messages)} messages through the publisher, run here on the in-memory bus "
        f"(TIBRIDGE_BUS=memory): {done}"
    )


_REPAIR_COUNTS = ("published", "updated", "deactivated", "sessions_opened", "dead_lettered")
