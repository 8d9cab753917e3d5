"""The unmodified azure-monitor-query async LogsQueryClient against the Log Analytics stand-in."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryPartialResult, LogsQueryResult
from azure.monitor.query.aio import LogsQueryClient

from tests.fixtures.sandbox import SANDBOX_ANCHOR, ManualClock, SandboxFactory
from tibridge.common.identity import StaticTokenCredential
from tibridge.sandbox import SandboxServer
from tibridge.sandbox.dataset import MDTI_SOURCE_SYSTEMS

KEYS = ("ipv4-addr:value", "domain-name:value", "url:value")


def kql(start: datetime, end: datetime, *, sources: tuple[str, ...] = MDTI_SOURCE_SYSTEMS) -> str:
    def literals(values: tuple[str, ...]) -> str:
        return ", ".join(json.dumps(v) for v in values)

    def instant(moment: datetime) -> str:
        return f"datetime({moment.strftime('%Y-%m-%dT%H:%M:%S.%f')}0Z)"

    return (
        "ThreatIntelIndicators\n"
        f"| where TimeGenerated >= {instant(start)} and TimeGenerated < {instant(end)}\n"
        f"| where SourceSystem in ({literals(sources)})\n"
        f"| where isempty(ObservableKey) or ObservableKey in ({literals(KEYS)})\n"
        "| summarize arg_max(TimeGenerated, *) by Id\n"
        "| order by TimeGenerated asc"
    )


def expected_ids(server: SandboxServer, start: datetime, end: datetime) -> list[str]:
    newest: dict[str, datetime] = {}
    for row in server.dataset.rows:
        in_window = start <= row.time_generated < end and row.source_system in MDTI_SOURCE_SYSTEMS
        if in_window and (not row.observable_key or row.observable_key in KEYS):
            newest[row.id] = row.time_generated
    return sorted(newest, key=newest.__getitem__)


@pytest.fixture
async def logs_client(sandbox: SandboxServer) -> AsyncIterator[LogsQueryClient]:
    async with LogsQueryClient(StaticTokenCredential(), endpoint=sandbox.endpoints.loganalytics) as client:
        yield client


WEEK_START = SANDBOX_ANCHOR - timedelta(days=7)


async def test_a_window_query_answers_typed_columns_newest_row_per_id(
    sandbox: SandboxServer, logs_client: LogsQueryClient
) -> None:
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id, kql(WEEK_START, SANDBOX_ANCHOR), timespan=None, enforce_https=False
    )
    assert isinstance(result, LogsQueryResult)
    (table,) = result.tables
    assert table.columns[:3] == ["Id", "TimeGenerated", "Pattern"]
    types = dict(zip(table.columns, table.columns_types, strict=True))
    assert (types["Confidence"], types["IsActive"], types["ValidUntil"], types["Data"]) == (
        "int",
        "bool",
        "datetime",
        "dynamic",
    )
    assert [row["Id"] for row in table.rows] == expected_ids(sandbox, WEEK_START, SANDBOX_ANCHOR)
    first = table.rows[0]
    assert isinstance(first["TimeGenerated"], datetime)
    assert isinstance(first["IsActive"], bool)
    assert isinstance(first["Confidence"], int)
    assert json.loads(first["Data"])["type"] == "indicator"
    assert isinstance(json.loads(first["Tags"]), list)
    assert set(json.loads(first["AdditionalFields"])) == {"TLPLevel"}
    stats = sandbox.stats()["loganalytics"]
    assert (stats["queries"], stats["rows_returned"]) == (1, len(table.rows))


async def test_the_body_timespan_narrows_the_query(sandbox: SandboxServer, logs_client: LogsQueryClient) -> None:
    day_start = SANDBOX_ANCHOR - timedelta(days=2)
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id,
        kql(WEEK_START, SANDBOX_ANCHOR),
        timespan=(day_start, timedelta(days=1)),
        enforce_https=False,
    )
    assert isinstance(result, LogsQueryResult)
    ids = [row["Id"] for row in result.tables[0].rows]
    assert ids == expected_ids(sandbox, day_start, day_start + timedelta(days=1))
    assert 0 < len(ids) < len(expected_ids(sandbox, WEEK_START, SANDBOX_ANCHOR))


async def test_no_data_is_200_with_columns_and_no_rows(sandbox: SandboxServer, logs_client: LogsQueryClient) -> None:
    future = SANDBOX_ANCHOR + timedelta(days=30)
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id, kql(future, future + timedelta(hours=1)), timespan=None, enforce_https=False
    )
    assert isinstance(result, LogsQueryResult)
    assert result.tables[0].rows == []
    assert result.tables[0].columns[0] == "Id"


async def test_the_legacy_table_is_served_from_the_same_data(
    sandbox: SandboxServer, logs_client: LogsQueryClient
) -> None:
    query = (
        'ThreatIntelligenceIndicator\n| where SourceSystem in ("Microsoft Defender Threat Intelligence")\n'
        "| summarize arg_max(TimeGenerated, *) by IndicatorId\n| order by TimeGenerated asc"
    )
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id, query, timespan=None, enforce_https=False
    )
    assert isinstance(result, LogsQueryResult)
    table = result.tables[0]
    assert table.columns[:2] == ["IndicatorId", "TimeGenerated"]
    assert dict(zip(table.columns, table.columns_types, strict=True))["ConfidenceScore"] == "real"
    assert table.rows
    assert all(isinstance(row["ConfidenceScore"], float) for row in table.rows)
    assert any(row["NetworkIP"] or row["DomainName"] for row in table.rows)


async def test_over_the_row_cap_is_a_partial_result(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(row_cap=10) as server:
        async with LogsQueryClient(StaticTokenCredential(), endpoint=server.endpoints.loganalytics) as client:
            result = await client.query_workspace(
                server.endpoints.workspace_id, kql(WEEK_START, SANDBOX_ANCHOR), timespan=None, enforce_https=False
            )
        assert isinstance(result, LogsQueryPartialResult)
        assert result.partial_error is not None
        assert result.partial_error.code == "PartialError"
        rows = result.partial_data[0].rows
        assert [row["Id"] for row in rows] == expected_ids(server, WEEK_START, SANDBOX_ANCHOR)[:10]
        assert server.stats()["loganalytics"]["partial_results"] == 1


async def test_a_query_outside_the_grammar_is_400_bad_argument(
    sandbox: SandboxServer, logs_client: LogsQueryClient
) -> None:
    with pytest.raises(HttpResponseError) as refused:
        await logs_client.query_workspace(
            sandbox.endpoints.workspace_id, "ThreatIntelIndicators | take 10", timespan=None, enforce_https=False
        )
    assert refused.value.status_code == 400
    assert "BadArgumentError" in str(refused.value)


async def test_escaped_quotes_in_literals_reach_the_filter(
    sandbox: SandboxServer, logs_client: LogsQueryClient
) -> None:
    query = kql(WEEK_START, SANDBOX_ANCHOR, sources=('Microsoft "Defender"\\ Threat', *MDTI_SOURCE_SYSTEMS[:1]))
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id, query, timespan=None, enforce_https=False
    )
    assert isinstance(result, LogsQueryResult)
    assert {row["SourceSystem"] for row in result.tables[0].rows} == {MDTI_SOURCE_SYSTEMS[0]}


async def test_429_with_retry_after_then_success(sandbox_factory: SandboxFactory) -> None:
    # One query per 4 s: the second query meets the 429 even when a loaded machine spaces the two out.
    async with sandbox_factory(faults={"loganalytics": {"rate_ceiling": 0.25, "burst": 1}}) as server:
        async with LogsQueryClient(StaticTokenCredential(), endpoint=server.endpoints.loganalytics) as client:
            for _ in range(2):
                result = await client.query_workspace(
                    server.endpoints.workspace_id, kql(WEEK_START, SANDBOX_ANCHOR), timespan=None, enforce_https=False
                )
                assert isinstance(result, LogsQueryResult)
        stats = server.stats()
        assert stats["requests"]["loganalytics"] == {"200": 2, "429": 1}
        assert stats["inside_retry_after"]["loganalytics"] == 0


async def test_unknown_workspace_is_404_and_no_token_is_401(sandbox: SandboxServer) -> None:
    url = f"{sandbox.endpoints.loganalytics}/v1/workspaces/{{}}/query"
    body = {"query": kql(WEEK_START, SANDBOX_ANCHOR)}
    async with httpx.AsyncClient(timeout=10) as client:
        unauthorised = await client.post(url.format(sandbox.endpoints.workspace_id), json=body)
        missing = await client.post(
            url.format("00000000-0000-0000-0000-000000000000"),
            json=body,
            headers={"Authorization": "Bearer tibridge-sandbox-token"},
        )
    assert (unauthorised.status_code, unauthorised.json()["error"]["code"]) == (401, "AuthorizationRequiredError")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "PathNotFoundError")


def count_kql(start: datetime, end: datetime, tail: str) -> str:
    return kql(start, end).rsplit("\n| summarize", 1)[0] + "\n" + tail


def raw_rows(server: SandboxServer, start: datetime, end: datetime) -> list[datetime]:
    return [
        row.time_generated
        for row in server.dataset.rows
        if start <= row.time_generated < end
        and row.source_system in MDTI_SOURCE_SYSTEMS
        and (not row.observable_key or row.observable_key in KEYS)
    ]


async def test_a_planner_can_count_rows_per_bin_with_the_same_filters(
    sandbox: SandboxServer, logs_client: LogsQueryClient
) -> None:
    """external-apis.md §1 limits make a cheap count per span worth it: `summarize ... count() by bin(...)`."""
    times = raw_rows(sandbox, WEEK_START, SANDBOX_ANCHOR)
    result = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id,
        count_kql(WEEK_START, SANDBOX_ANCHOR, "| summarize Rows = count() by bin(TimeGenerated, 6h)"),
        timespan=None,
        enforce_https=False,
    )
    assert isinstance(result, LogsQueryResult)
    table = result.tables[0]
    assert list(table.columns) == ["TimeGenerated", "Rows"]
    assert list(table.columns_types) == ["datetime", "long"]
    bins = {row[0]: row[1] for row in table.rows}
    assert sum(bins.values()) == len(times)
    assert all(start.hour % 6 == 0 and start.minute == 0 for start in bins)
    ordered = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id,
        count_kql(
            WEEK_START,
            SANDBOX_ANCHOR,
            "| summarize N = count() by bin(TimeGenerated, 1d)\n| order by TimeGenerated asc",
        ),
        timespan=None,
        enforce_https=False,
    )
    assert isinstance(ordered, LogsQueryResult)
    starts = [row[0] for row in ordered.tables[0].rows]
    assert starts == sorted(starts)
    assert sum(row[1] for row in ordered.tables[0].rows) == len(times)
    total = await logs_client.query_workspace(
        sandbox.endpoints.workspace_id,
        count_kql(WEEK_START, SANDBOX_ANCHOR, "| count"),
        timespan=None,
        enforce_https=False,
    )
    assert isinstance(total, LogsQueryResult)
    assert (list(total.tables[0].columns), total.tables[0].rows[0][0]) == (["Count"], len(times))
    assert sandbox.stats()["loganalytics"]["count_queries"] == 3


@pytest.mark.parametrize(
    "tail",
    [
        "| summarize count() by bin(TimeGenerated, 6h)",
        "| summarize Rows = count() by bin(TimeGenerated, 6 hours)",
        "| summarize Rows = count() by bin(Created, 6h)",
        "| summarize Rows = dcount(Id) by bin(TimeGenerated, 6h)",
        "| summarize Id = count() by bin(TimeGenerated, 6h)",
        "| count by Id",
        "| take 10",
    ],
)
async def test_counts_outside_the_grammar_are_400_bad_argument(sandbox: SandboxServer, tail: str) -> None:
    url = f"{sandbox.endpoints.loganalytics}/v1/workspaces/{sandbox.endpoints.workspace_id}/query"
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": "Bearer tibridge-sandbox-token"}) as client:
        response = await client.post(url, json={"query": count_kql(WEEK_START, SANDBOX_ANCHOR, tail)})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "BadArgumentError")


async def test_an_empty_workspace_answers_204_or_200_as_configured(sandbox_factory: SandboxFactory) -> None:
    """external-apis.md §1: a workspace with no data at all answers 204 No Content (documented)."""
    for setting, status in (("204", 204), ("200", 200)):
        async with sandbox_factory(indicators=0, loganalytics_no_data=setting) as server:
            url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
            async with httpx.AsyncClient(
                timeout=10, headers={"Authorization": "Bearer tibridge-sandbox-token"}
            ) as client:
                response = await client.post(url, json={"query": kql(WEEK_START, SANDBOX_ANCHOR)})
                bad = await client.post(url, json={"query": "ThreatIntelIndicators | take 1"})
            assert response.status_code == status
            assert bad.status_code == 400  # still parsed strictly
            if status == 204:
                assert response.content == b""
                assert server.stats()["loganalytics"]["no_content"] == 1


async def test_a_sixth_concurrent_query_is_429(sandbox_factory: SandboxFactory) -> None:
    """external-apis.md §1: 5 concurrent queries per identity."""
    clock = ManualClock()
    release = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await release.wait()

    clock.sleep = slow_sleep  # type: ignore[method-assign]  # every injected latency waits for the test
    async with sandbox_factory(clock=clock, indicators=20, faults={"loganalytics": {"latency_ms": 1}}) as server:
        url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": "Bearer tibridge-sandbox-token"}) as client:
            body = {"query": kql(WEEK_START, SANDBOX_ANCHOR)}
            running = [asyncio.create_task(client.post(url, json=body)) for _ in range(5)]
            await until_in_flight(server, 5)
            sixth = await client.post(url, json=body)
            release.set()
            answers = await asyncio.gather(*running)
    assert (sixth.status_code, sixth.json()["error"]["code"]) == (429, "ThrottledError")
    assert "concurrent" in sixth.json()["error"]["message"]
    assert sixth.headers["Retry-After"] == "1"
    assert [answer.status_code for answer in answers] == [200] * 5
    assert server.state.loganalytics_limits.peak == 5


async def until_in_flight(server: SandboxServer, count: int) -> None:
    for _ in range(500):
        if server.state.loganalytics_limits.in_flight >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} queries in flight")


async def test_more_than_the_window_allows_is_429_with_retry_after(sandbox_factory: SandboxFactory) -> None:
    """external-apis.md §1: 200 requests per 30 s per identity (here 3 per 30 s), then 429 with Retry-After."""
    clock = ManualClock()
    settings = {"clock": clock, "indicators": 20, "loganalytics_requests_per_window": 3}
    async with sandbox_factory(**settings) as server:
        url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": "Bearer tibridge-sandbox-token"}) as client:
            body = {"query": kql(WEEK_START, SANDBOX_ANCHOR)}
            statuses = [(await client.post(url, json=body)).status_code for _ in range(3)]
            clock.advance(10)
            limited = await client.post(url, json=body)
            clock.advance(20)
            again = await client.post(url, json=body)
    assert statuses == [200, 200, 200]
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "20")
    assert again.status_code == 200


async def test_the_table_carries_real_shaped_ids_and_producer_hash_key_spellings(
    sandbox_factory: SandboxFactory,
) -> None:
    """external-apis.md §1: `Id` is `<base64 of the source>---indicator--<uuid>`; hash keys vary by producer."""
    keys = [f"file:hashes.{spelling}" for spelling in ("MD5", "'MD5'", "'SHA-1'", "'SHA1'", "SHA1", "'SHA-256'",
            "'SHA256'", "SHA256", "'SHA-512'", "'SHA512'", "SHA512")]  # fmt: skip
    async with sandbox_factory(indicators=1500) as server:
        url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
        query = kql(SANDBOX_ANCHOR - timedelta(days=15), SANDBOX_ANCHOR).replace(
            ", ".join(json.dumps(k) for k in KEYS), ", ".join(json.dumps(k) for k in keys)
        )
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": "Bearer tibridge-sandbox-token"}) as client:
            table = (await client.post(url, json={"query": query})).json()["tables"][0]
    names = [column["name"] for column in table["columns"]]
    rows = [dict(zip(names, row, strict=True)) for row in table["rows"] if row[names.index("ObservableKey")]]
    assert {row["ObservableKey"] for row in rows} == set(keys)
    for row in rows:
        encoded, _, stix_id = row["Id"].partition("---")
        assert base64.b64decode(encoded).decode() == row["Source"]
        assert stix_id.startswith("indicator--")
    assert any(len(row["ObservableValue"]) == 128 for row in rows)
