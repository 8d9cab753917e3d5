"""`tibridge explain VALUE`: one observable's story, the answer to "why is this (not) in ThreatStream?".

Its rows in Sentinel (the newest row of each indicator, newest first) and what the collector's normalisation made
of each; its reputation (a live lookup through the scorer's Graph batcher); the verdict and its reason under the
current settings (the scorer's rules, applied to the newest indicator, as the publisher's batches keep the newest);
and every ThreatStream entry of the value, each said to be ours or not by the publisher's ownership rule.

The ThreatStream search is by value (`GET v2/intelligence/?value=…`, external-apis.md §3): the one request of
tibridge with an indicator in its URL, made only when an operator asks about that value.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import typer

from tibridge.cli.pipeline import load_pipeline_settings
from tibridge.cli.state import (
    Normalised,
    Scoring,
    StateError,
    normalise_rows,
    pipeline_parts,
    read_sentinel,
    read_whitelist,
    reading_gateway,
    sentinel_span,
)
from tibridge.collector.normalise import KeyKind, normalise
from tibridge.collector.rows import RowRejected
from tibridge.collector.windows import Window
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.contracts import HashAlgorithm, IndicatorCollected, IndicatorScored, ObservableType
from tibridge.publisher.ownership import not_ours_because
from tibridge.publisher.payloads import INTELLIGENCE_PATH, PAGE_SIZE, Operation, ThreatStreamRequest
from tibridge.publisher.threatstream import Outcome

EXIT_EXPLAINED = 0
EXIT_UNREADABLE = 4
_KINDS = (
    KeyKind(None),
    KeyKind(ObservableType.DOMAIN),
    KeyKind(ObservableType.URL),
    KeyKind(ObservableType.EMAIL),
    *(KeyKind(ObservableType.FILE_HASH, algorithm) for algorithm in HashAlgorithm),
)


def canonical_forms(value: str) -> set[str]:
    """Every canonical value the collector's normalisation makes of `value`, whatever kind it is read as."""
    forms = {normalise(kind, value, reject_non_global=False) for kind in _KINDS}
    return {form.value for form in forms if not isinstance(form, str)}


def matching_rows(normalised: Sequence[Normalised], value: str) -> list[Normalised]:
    """The rows about `value`: normalised to one of its canonical forms, or refused while carrying it as written."""
    forms = canonical_forms(value) | {value.strip()}
    raw = value.strip().lower()

    def about(item: Normalised) -> bool:
        if isinstance(item.result, IndicatorCollected):
            return item.result.observable.value in forms
        written = item.row.get("ObservableValue")
        return isinstance(written, str) and written.strip().lower() == raw

    found = [item for item in normalised if about(item)]
    return sorted(found, key=lambda item: str(item.row.get("TimeGenerated") or ""), reverse=True)


def entry_story(obj: Mapping[str, Any], why_not: str | None) -> dict[str, Any]:
    tags = [tag.get("name") for tag in obj.get("tags") or () if isinstance(tag, Mapping)]
    return {
        "id": obj.get("id"),
        "ours": why_not is None,
        "why_not_ours": why_not,
        "itype": obj.get("itype"),
        "status": obj.get("status"),
        "is_public": obj.get("is_public"),
        "source": obj.get("source"),
        "tags": tags,
        "expiration_ts": obj.get("expiration_ts"),
        "modified_ts": obj.get("modified_ts"),
    }


@dataclass(frozen=True)
class Story:
    value: str
    rows: list[dict[str, Any]]
    verdict: IndicatorScored | None
    lookup: str
    entries: list[dict[str, Any]]
    whitelisted: bool = False

    def to_json(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "value": self.value,
            "sentinel_rows": self.rows,
            "reputation": verdict.reputation.model_dump(mode="json") if verdict and verdict.reputation else None,
            "reputation_source": self.lookup,
            "verdict": {"verdict": str(verdict.verdict), "reason": verdict.reason} if verdict else None,
            "threatstream": self.entries,
            "on_whitelist": self.whitelisted,
        }

    def lines(self) -> list[str]:
        out = [
            f"{self.value}: {len(self.rows)} indicator rows in Sentinel (the newest row of each indicator of the "
            "configured source systems and observable keys, newest first)"
        ]
        for row in self.rows:
            out.append(
                f"  {row['time_generated']} {row['indicator_id']} [{row['source_system']}] {row['observable_key']}="
                f"{row['observable_value']!r} → {row['normalised']}"
            )
        verdict = self.verdict
        if verdict is None:
            out.append("verdict: none — no row of it normalises, so nothing reaches the scorer")
        else:
            reputation = verdict.reputation
            said = f"score {reputation.score}, {reputation.classification}" if reputation else "none"
            out.append(f"reputation ({self.lookup}): {said}")
            out.append(f"verdict under the current settings: {verdict.verdict} ({verdict.reason})")
        if self.whitelisted:
            out.append("the value is on the organisation's ThreatStream whitelist: ThreatStream refuses to import it")
        ours = [entry for entry in self.entries if entry["ours"]]
        out.append(f"ThreatStream: {len(self.entries)} entries, {len(ours)} of them tibridge's")
        for entry in self.entries:
            whose = "ours" if entry["ours"] else f"not ours: {entry['why_not_ours']}"
            out.append(
                f"  id {entry['id']} {entry['itype']} {entry['status']} "
                f"{'public' if entry['is_public'] else 'private'} source {entry['source']!r} ({whose})"
            )
        return out


def _row_story(item: Normalised) -> dict[str, Any]:
    row, result = item.row, item.result
    if isinstance(result, RowRejected):
        said = f"refused: {result.reason}"
    else:
        state = "active" if result.active else f"inactive ({result.inactive_reason})"
        said = f"{result.observable.type} {result.observable.value} {state}"
    return {
        "time_generated": str(row.get("TimeGenerated")),
        "indicator_id": str(row.get("Id") or row.get("IndicatorId")),
        "source_system": str(row.get("SourceSystem")),
        "observable_key": str(row.get("ObservableKey")),
        "observable_value": row.get("ObservableValue"),
        "normalised": said,
    }


async def explain(value: str, clock: Clock) -> Story:
    settings = load_pipeline_settings({"health_port": 0})
    collecting, scoring_settings, publishing = pipeline_parts(settings)
    async with contextlib.AsyncExitStack() as resources:
        collected = await sentinel_span(collecting, resources, clock)
        window = Window(collected.start, clock.now())  # every row, collected or not
        read = await read_sentinel(collecting, window, resources, clock)
        found = matching_rows(normalise_rows(collecting, read.rows, clock.now()), value)
        indicators = [item.result for item in found if isinstance(item.result, IndicatorCollected)]
        newest = max(indicators, key=lambda indicator: indicator.time_generated, default=None)
        verdict = None
        lookup = "not looked up"
        if newest is not None:
            scoring = Scoring(scoring_settings, resources, clock)
            verdict = await scoring.score(newest)
            lookup = "live lookup through the scorer's Graph client" if scoring.lookups else "not needed"
        search_value = newest.observable.value if newest is not None else value.strip()
        gateway = reading_gateway(publishing, resources, clock)
        search = ThreatStreamRequest(
            Operation.SEARCH, "GET", INTELLIGENCE_PATH, params={"value": search_value, "limit": str(PAGE_SIZE)}
        )
        answer = await gateway.send(search)
        whitelist = await read_whitelist(publishing, gateway)
    if answer.outcome is not Outcome.ACCEPTED:
        raise StateError(f"ThreatStream's search failed: {answer.detail}")
    objects = answer.body.get("objects") if isinstance(answer.body, dict) else None
    entries = [
        entry_story(obj, not_ours_because(obj, publishing.publisher))
        for obj in objects or ()
        if isinstance(obj, Mapping)
    ]
    rows = [_row_story(item) for item in found]
    return Story(search_value, rows, verdict, lookup, entries, whitelisted=search_value in whitelist)


async def run_explain(value: str, *, as_json: bool, clock: Clock | None = None) -> int:
    try:
        story = await explain(value, clock or SystemClock())
    except StateError as error:
        typer.echo(f"error: {error}", err=True)
        return EXIT_UNREADABLE
    if as_json:
        typer.echo(json.dumps(story.to_json(), indent=2, default=str))
    else:
        for line in story.lines():
            typer.echo(line)
    return EXIT_EXPLAINED
