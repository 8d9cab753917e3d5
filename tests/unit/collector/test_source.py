"""The Log Analytics adapter over a scripted client: request shape, counts, 204, byte budgets, retries,
Retry-After, clear errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceResponseError
from azure.core.rest import HttpRequest

from tests.fixtures.clock import ManualClock
from tests.fixtures.collector import ANCHOR
from tibridge.collector.app import query_engine
from tibridge.collector.kql import IndicatorTable, QuerySpec
from tibridge.collector.settings import LogAnalyticsSettings
from tibridge.collector.source import Answer as QueryAnswer
from tibridge.collector.source import LogAnalyticsSource, SourceError, judge_answer
from tibridge.collector.windows import Bin, Window

WORKSPACE = "5a4db0c5-0000-4000-8000-000000000001"
WINDOW = Window(ANCHOR - timedelta(hours=6), ANCHOR)
RESULT = {
    "tables": [
        {
            "name": "PrimaryResult",
            "columns": [{"name": "Id", "type": "string"}, {"name": "TimeGenerated", "type": "datetime"}],
            "rows": [["indicator--1", "2026-11-14T20:00:00.0000000Z"], ["indicator--2", "2026-11-14T21:00:00Z"]],
        }
    ]
}


@dataclass
class Answer:
    """What `send_request(..., stream=True)` hands back: the body comes in chunks, and must be closed."""

    status_code: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    chunk_size: int = 64
    read_bytes: int = 0
    closed: bool = False

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.chunk_size):
            chunk = self.body[start : start + self.chunk_size]
            self.read_bytes += len(chunk)
            yield chunk

    async def close(self) -> None:
        self.closed = True


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    return Answer(status, json.dumps(RESULT if body is None else body).encode(), headers)


@dataclass
class ScriptedClient:
    """Stands in for LogsQueryClient.send_request: answers (or raises) from a script, records the calls."""

    script: list[Answer | Exception | Callable[[], Answer]]
    requests: list[tuple[HttpRequest, dict[str, Any]]] = field(default_factory=list)

    async def send_request(self, request: HttpRequest, **kwargs: Any) -> Answer:
        self.requests.append((request, kwargs))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step() if callable(step) else step


def source(client: ScriptedClient, clock: ManualClock, *, attempts: int = 4, allow_http: bool = False) -> Any:
    settings = LogAnalyticsSettings(
        endpoint="http://127.0.0.1:8642/loganalytics" if allow_http else "https://api.loganalytics.io",
        workspace_id=WORKSPACE,
        query_timeout_seconds=60,
        query_attempts=attempts,
        retry_base_delay_seconds=1.0,
    )
    spec = QuerySpec(IndicatorTable.NEW, ("Microsoft Defender Threat Intelligence",), ("url:value",))
    return LogAnalyticsSource(client, settings, spec, query_engine(settings, clock))  # type: ignore[arg-type]


async def test_the_request_is_the_query_apis(clock: ManualClock) -> None:
    client = ScriptedClient([answer(200)])
    result = await source(client, clock).read(WINDOW)
    assert result.complete
    rows = list(result.rows())
    assert [row["Id"] for row in rows] == ["indicator--1", "indicator--2"]
    assert rows[1]["TimeGenerated"] == "2026-11-14T21:00:00Z"
    request, kwargs = client.requests[0]
    assert (request.method, request.url) == ("POST", f"/workspaces/{WORKSPACE}/query")
    body = json.loads(request.content)
    assert body["timespan"] == "2026-11-14T18:00:00.000000Z/2026-11-15T00:00:00.000000Z"
    assert body["query"].startswith("ThreatIntelIndicators\n| where TimeGenerated >= datetime(2026-11-14T18:00")
    assert request.headers["Prefer"] == "wait=60"
    assert "enforce_https" not in kwargs
    assert kwargs["read_timeout"] > 60
    assert kwargs["stream"] is True


async def test_plain_http_is_allowed_only_when_asked(clock: ManualClock) -> None:
    client = ScriptedClient([answer(200)])
    await source(client, clock, allow_http=True).read(WINDOW)
    assert client.requests[0][1]["enforce_https"] is False


async def test_a_partial_result_is_reported_incomplete(clock: ManualClock) -> None:
    partial = {**RESULT, "error": {"code": "PartialError", "message": "too many rows"}}
    result = await source(ScriptedClient([answer(200, partial)]), clock).read(WINDOW)
    assert not result.complete
    assert len(result) == 2


async def test_an_empty_table_is_no_rows(clock: ManualClock) -> None:
    result = await source(ScriptedClient([answer(200, {"tables": []})]), clock).read(WINDOW)
    assert (list(result.rows()), result.complete) == ([], True)


async def test_204_from_a_workspace_without_data_is_no_rows_not_a_wrong_endpoint(clock: ManualClock) -> None:
    client = ScriptedClient([Answer(204, b""), Answer(204, b"")])
    result = await source(client, clock).read(WINDOW)
    assert (list(result.rows()), result.complete) == ([], True)
    assert await source(client, clock).count(WINDOW, timedelta(minutes=10)) == []


async def test_an_answer_past_the_byte_budget_is_not_read_on(clock: ManualClock) -> None:
    big = answer(200)
    result = await source(ScriptedClient([big]), clock).read(WINDOW, max_bytes=100)
    assert (len(result), result.complete) == (0, False)
    assert big.read_bytes <= 100 + big.chunk_size
    assert big.closed


async def test_a_count_is_rows_per_bin_oldest_first(clock: ManualClock) -> None:
    counted = {
        "tables": [
            {
                "name": "PrimaryResult",
                "columns": [{"name": "TimeGenerated", "type": "datetime"}, {"name": "Rows", "type": "long"}],
                "rows": [["2026-11-14T20:00:00.0000000Z", 7], ["2026-11-14T19:50:00.0000000Z", 3]],
            }
        ]
    }
    client = ScriptedClient([answer(200, counted)])
    bins = await source(client, clock).count(WINDOW, timedelta(minutes=10))
    assert bins == [
        Bin(datetime(2026, 11, 14, 19, 50, tzinfo=UTC), 3),
        Bin(datetime(2026, 11, 14, 20, 0, tzinfo=UTC), 7),
    ]
    query = json.loads(client.requests[0][0].content)["query"]
    assert query.endswith("| summarize Rows = count() by bin(TimeGenerated, 600s)")


@pytest.mark.parametrize(
    "table",
    [
        {"name": "PrimaryResult", "columns": [{"name": "TimeGenerated"}], "rows": [["2026-11-14T20:00:00Z"]]},
        {"columns": [{"name": "TimeGenerated"}, {"name": "Rows"}], "rows": [["not a time", 1]]},
        {"columns": [{"name": "TimeGenerated"}, {"name": "Rows"}], "rows": [["2026-11-14T20:00:00Z", "7"]]},
        {"columns": [{"name": "TimeGenerated"}, {"name": "Rows"}], "rows": [["2026-11-14T20:00:00Z", -1]]},
    ],
)
async def test_a_count_that_is_no_count_is_a_clear_error(clock: ManualClock, table: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match="not one"):
        await source(ScriptedClient([answer(200, {"tables": [table]})]), clock).count(WINDOW, timedelta(minutes=10))


async def test_throttling_waits_exactly_as_long_as_retry_after_says(clock: ManualClock) -> None:
    client = ScriptedClient([answer(429, {"error": {"code": "ThrottledError"}}, **{"Retry-After": "7"}), answer(200)])
    result = await source(client, clock).read(WINDOW)
    assert result.complete
    assert clock.sleeps == [7.0]


async def test_server_errors_and_timeouts_back_off_then_succeed(clock: ManualClock) -> None:
    client = ScriptedClient([answer(503, {}), ServiceResponseError("reset"), TimeoutError(), answer(200)])
    result = await source(client, clock).read(WINDOW)
    assert result.complete
    assert len(clock.sleeps) == 3
    assert all(0.5 <= delay <= 4.0 for delay in clock.sleeps)


async def test_retries_are_bounded(clock: ManualClock) -> None:
    client = ScriptedClient([answer(500, {}) for _ in range(3)])
    with pytest.raises(SourceError, match=r"kept failing \(500\) after 3 attempts"):
        await source(client, clock, attempts=3).read(WINDOW)
    assert len(client.requests) == 3


async def test_a_retry_after_longer_than_we_wait_for_gives_up_at_once(clock: ManualClock) -> None:
    client = ScriptedClient([answer(429, {}, **{"Retry-After": "3600"})])
    with pytest.raises(SourceError, match=r"asked us to wait longer than 300s \(429\)"):
        await source(client, clock).read(WINDOW)
    assert clock.sleeps == []


BAD_QUERY = {
    "error": {
        "code": "BadArgumentError",
        "message": "The request had some invalid properties",
        "innererror": {"code": "SemanticError", "innererror": {"message": "Failed to resolve table 'X'"}},
    }
}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, BAD_QUERY, r"rejected the query \(BadArgumentError: Failed to resolve table 'X'\).*COLLECTOR_TABLE"),
        (401, {"error": {"code": "AuthorizationRequiredError"}}, "refused access.*TIBRIDGE_CREDENTIAL"),
        (403, {"error": {"code": "InsufficientAccessError"}}, "Log Analytics Reader"),
        (404, {"error": {"code": "PathNotFoundError"}}, "TIBRIDGE_LOGANALYTICS_WORKSPACE_ID"),
        (409, "not even an error object", "answered 409"),
    ],
)
async def test_refusals_are_clear_and_not_retried(clock: ManualClock, status: int, body: Any, message: str) -> None:
    client = ScriptedClient([answer(status, body)])
    with pytest.raises(SourceError, match=message):
        await source(client, clock).read(WINDOW)
    assert len(client.requests) == 1


async def test_a_body_that_is_no_query_result_is_a_clear_error(clock: ManualClock) -> None:
    client = ScriptedClient([Answer(200, b"<html>proxy login</html>")])
    with pytest.raises(SourceError, match="not a query result"):
        await source(client, clock).read(WINDOW)


async def test_no_token_is_a_clear_error(clock: ManualClock) -> None:
    client = ScriptedClient([ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token\nmore")])
    with pytest.raises(SourceError, match=r"no token for Log Analytics \(DefaultAzureCredential failed.*\); check"):
        await source(client, clock).read(WINDOW)


def test_an_answer_cut_short_is_retried_and_a_whole_one_stands() -> None:
    assert judge_answer(QueryAnswer(200, b'{"tables": [{"name": "PrimaryResult"')) is not None
    assert judge_answer(QueryAnswer(200, b'{"tables": []}\n')) is None
    assert judge_answer(QueryAnswer(204, b"")) is None
