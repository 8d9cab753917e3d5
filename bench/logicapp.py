"""A MODEL of the Logic App tibridge replaces ("MDTIFeed-Anomali"), for the benchmark's baseline only.

It is not the Logic App and not part of tibridge: it replays that playbook's algorithm
(`shared/docs/external-apis.md` §4) against the sandbox, giving it every benefit of the doubt:

* Reads the legacy `ThreatIntelligenceIndicator` table in four per-type passes run one after another as the
  playbook's scopes are (file hashes, domains, URLs, IPs), each `isnotempty(<column>)` on the MDTI source
  systems. The playbook reads `TimeGenerated > ago(5min)` every five minutes; the model reads every row such
  windows would have given it over the whole data span, as if its runs had tiled time perfectly (no drift
  between the four queries, no ingestion lag, no run that failed or overran). Re-published copies of an
  indicator are rows of their own, as they are to the playbook. The sandbox's KQL needs `summarize … by
  IndicatorId`, so each pass is five queries over equal slices of the span, sent at once: Log Analytics
  runs five at once (a sixth would be a 429), and a slice shorter than the seven-day republish interval
  lets the summarize drop nothing. A pass costs one query latency, as the playbook's does.
* Processes the work of all those five-minute runs back to back with no idle time between them: each
  scope is a For-each with Logic Apps' default parallelism of 20.
* One Graph GET per IP (`NetworkSourceIP` only, as the playbook) and per domain; when `score >= 75` one
  `POST /api/v2/intelligence/import/` per row. URLs and hashes are imported unscored at confidence 100;
  the playbook's nested loop posts each hash once per hash row of its run, which the model reproduces per
  five-minute window.
* Logic Apps' Default retry policy on 408, 429, 5xx and timeouts: 4 retries at exponential intervals
  (7.5 s scale, 5 to 45 s); the model waits the shortest interval of each range (5, 7.5, 15, 30 s), or the
  Retry-After if that is longer. Then the item is lost, its For-each fails, and the later scopes of that
  five-minute run are skipped.
* Fixed for it: fields go in the form body, not the query string, and `classification` is `private` (the
  playbook sends MDTI's classification and "Private", which ThreatStream's vocabulary does not have), so
  the sandbox accepts its requests. The harness approves the import sessions afterwards, as an analyst
  would, before counting what it delivered.

    python -m bench.logicapp --report R.json     # settings (endpoints, keys) from the sandbox's TIBRIDGE_* env
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import isodate  # type: ignore[import-untyped]  # ships no type information

from bench.processes import peak_rss_mib
from tibridge.common.identity import SANDBOX_BEARER_TOKEN

FOR_EACH_PARALLELISM = 20
SCORING_THRESHOLD = 75  # the playbook's `Scoring` parameter, set to tibridge's default threshold
RUN_WINDOW = timedelta(minutes=5)
# Log Analytics' documented limit of concurrent queries: a pass's slices all run at once, none is a 429.
CONCURRENT_QUERIES = 5
# A slice must be shorter than the sandbox's (and MDTI's) weekly re-publication, so `summarize … by
# IndicatorId` never merges two copies of an indicator, which the playbook sees as rows of their own.
LONGEST_SLICE = timedelta(days=7) - timedelta(seconds=1)
RETRY_WAITS_SECONDS = (5.0, 7.5, 15.0, 30.0)  # the shortest of each Default-policy range
RETRYABLE = frozenset({408, 429})
REQUEST_TIMEOUT_SECONDS = 120.0
SOURCE_SYSTEMS = (
    "Microsoft Defender Threat Intelligence",
    "Premium Microsoft Defender Threat Intelligence",
    "Microsoft Threat Intelligence Analytics",
)


@dataclass(frozen=True)
class Scope:
    name: str
    column: str
    scored: bool
    threat_type: str


# In the playbook's order: each scope runs only after the one before it succeeded.
SCOPES = (
    Scope("file hashes", "FileHashValue", scored=False, threat_type="malware"),
    Scope("domains", "DomainName", scored=True, threat_type="compromised"),
    Scope("urls", "Url", scored=False, threat_type="compromised"),
    Scope("ips", "NetworkSourceIP", scored=True, threat_type="compromised"),
)


@dataclass
class ScopeReport:
    rows: int = 0
    skipped: int = 0  # rows of runs an earlier scope had failed
    graph_lookups: int = 0
    imports: int = 0
    failed: int = 0  # items lost after the retries
    seconds: float = 0.0


@dataclass
class Report:
    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    scopes: dict[str, ScopeReport] = field(default_factory=dict)
    windows: int = 0
    failed_windows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "retries": self.retries,
            "windows": self.windows,
            "failed_windows": self.failed_windows,
            "scopes": {name: scope.__dict__ for name, scope in self.scopes.items()},
        }


class ItemFailed(Exception):
    pass


class Model:
    def __init__(self, env: Mapping[str, str], client: httpx.AsyncClient, now: datetime) -> None:
        self._env = env
        self._client = client
        self._now = now
        self._slots = asyncio.Semaphore(FOR_EACH_PARALLELISM)
        self.report = Report()
        self._failed_windows: set[int] = set()
        self._windows: set[int] = set()  # five-minute runs that had any row

    async def _send(self, api: str, make: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """One action with the Default retry policy; raises ItemFailed once the retries are spent."""
        for attempt in range(len(RETRY_WAITS_SECONDS) + 1):
            self.report.requests[api] += 1
            try:
                response = await make()
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code < 400:
                return response
            retryable = response is None or response.status_code in RETRYABLE or response.status_code >= 500
            if not retryable or attempt == len(RETRY_WAITS_SECONDS):
                raise ItemFailed(api)
            retry_after = response.headers.get("Retry-After", "") if response is not None else ""
            wait = max(RETRY_WAITS_SECONDS[attempt], float(retry_after) if retry_after.isdigit() else 0.0)
            self.report.retries += 1
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # -- Log Analytics ---------------------------------------------------------------------------

    def _spans(self) -> list[tuple[datetime, datetime]]:
        lookback: timedelta = isodate.parse_duration(self._env["TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK"])
        count = max(CONCURRENT_QUERIES, math.ceil(lookback / LONGEST_SLICE))
        start = self._now - lookback
        bounds = [start + lookback * n / count for n in range(count)] + [self._now]
        return list(itertools.pairwise(bounds))

    async def _query(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        sources = ", ".join(f'"{source}"' for source in SOURCE_SYSTEMS)
        kql = (
            "ThreatIntelligenceIndicator\n"
            f"| where TimeGenerated >= datetime({start.isoformat()}) and TimeGenerated < datetime({end.isoformat()})\n"
            f"| where SourceSystem in ({sources})\n"
            "| summarize arg_max(TimeGenerated, *) by IndicatorId\n"
            "| order by TimeGenerated asc"
        )
        workspace = self._env["TIBRIDGE_LOGANALYTICS_WORKSPACE_ID"]
        url = f"{self._env['TIBRIDGE_LOGANALYTICS_ENDPOINT']}/v1/workspaces/{workspace}/query"
        headers = {"Authorization": f"Bearer {SANDBOX_BEARER_TOKEN}"}
        response = await self._send(
            "loganalytics", lambda: self._client.post(url, json={"query": kql}, headers=headers)
        )
        table = response.json()["tables"][0]
        names = [column["name"] for column in table["columns"]]
        return [dict(zip(names, row, strict=True)) for row in table["rows"]]

    async def rows(self, column: str) -> list[dict[str, Any]]:
        """Every row with `column` filled, in time order (a failed span's rows are lost for this pass)."""
        slots = asyncio.Semaphore(CONCURRENT_QUERIES)

        async def query(start: datetime, end: datetime) -> list[dict[str, Any]]:
            async with slots:
                return await self._query(start, end)

        answers = await asyncio.gather(*(query(s, e) for s, e in self._spans()), return_exceptions=True)
        rows: list[dict[str, Any]] = []
        for answer in answers:
            if isinstance(answer, ItemFailed):
                continue
            if isinstance(answer, BaseException):
                raise answer
            rows.extend(row for row in answer if row.get(column))
        return rows

    # -- Graph and ThreatStream --------------------------------------------------------------------

    async def _reputation(self, host: str) -> dict[str, Any]:
        url = f"{self._env['TIBRIDGE_GRAPH_BASE_URL']}/security/threatIntelligence/hosts('{host}')/reputation"
        headers = {"Authorization": f"Bearer {SANDBOX_BEARER_TOKEN}"}
        response = await self._send("graph", lambda: self._client.get(url, headers=headers))
        body: dict[str, Any] = response.json()
        return body

    async def _import(self, fields: dict[str, str]) -> None:
        url = f"{self._env['TIBRIDGE_THREATSTREAM_BASE_URL']}/v2/intelligence/import/"
        headers = {
            "Authorization": f"apikey {self._env['TIBRIDGE_THREATSTREAM_USERNAME']}:"
            f"{self._env['TIBRIDGE_THREATSTREAM_API_KEY']}"
        }
        await self._send("threatstream", lambda: self._client.post(url, data=fields, headers=headers))

    async def _item(self, scope: Scope, row: dict[str, Any], posts: int, report: ScopeReport) -> None:
        value = str(row[scope.column])
        fields = {
            "datatext": value,
            "classification": "private",
            "intelligence_source": "Microsoft_Defender_Threat_intelligence",
            "threat_type": scope.threat_type,
            "confidence": "100",
        }
        async with self._slots:
            if scope.scored:
                report.graph_lookups += 1
                reputation = await self._reputation(value)
                if int(reputation.get("score") or 0) < SCORING_THRESHOLD:
                    return
                fields.update(
                    confidence=str(reputation["score"]),
                    tags=json.dumps(reputation.get("rules", [])),
                    description=str(row.get("ThreatType", "")),
                )
        for _ in range(posts):
            async with self._slots:
                report.imports += 1
                await self._import(fields)

    async def run_scope(self, scope: Scope) -> None:
        started = time.monotonic()
        report = self.report.scopes[scope.name] = ScopeReport()
        rows = await self.rows(scope.column)
        report.rows = len(rows)
        runs: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            runs.setdefault(_window(row["TimeGenerated"]), []).append(row)
        self._windows.update(runs)
        items: list[tuple[int, Awaitable[None]]] = []
        for window, run in runs.items():
            if window in self._failed_windows:
                report.skipped += len(run)
                continue
            # The playbook's hash scope loops over the run's rows inside a loop over them: n² posts.
            posts = len(run) if scope.name == "file hashes" else 1
            items += [(window, self._item(scope, row, posts, report)) for row in run]
        results = await asyncio.gather(*(item for _, item in items), return_exceptions=True)
        for (window, _), result in zip(items, results, strict=True):
            if isinstance(result, ItemFailed):
                report.failed += 1
                self._failed_windows.add(window)
            elif isinstance(result, BaseException):
                raise result
        report.seconds = round(time.monotonic() - started, 3)

    async def run(self) -> None:
        for scope in SCOPES:
            await self.run_scope(scope)
        self.report.windows = len(self._windows)
        self.report.failed_windows = len(self._failed_windows)


def _window(time_generated: str) -> int:
    """The five-minute run whose `ago(5min)` window holds this TimeGenerated (Kusto's 7-digit form)."""
    instant = datetime.fromisoformat(time_generated[:26]).replace(tzinfo=UTC)
    return int(instant.timestamp() // RUN_WINDOW.total_seconds())


async def _run() -> Report:
    limits = httpx.Limits(max_connections=4 * FOR_EACH_PARALLELISM)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client:
        model = Model(os.environ, client, datetime.now(UTC))
        await model.run()
    return model.report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logicapp", description="A model of the Logic App.")
    parser.add_argument("--report", type=Path, required=True)
    arguments = parser.parse_args(argv)
    report = asyncio.run(_run())
    figures = report.to_json() | {"peak_rss_mib": peak_rss_mib()}
    arguments.report.write_text(json.dumps(figures) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
