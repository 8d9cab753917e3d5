"""Where rows come from: a small port, and its Log Analytics adapter over azure-monitor-query's async client.

The adapter sends the query API's request (`POST /v1/workspaces/{id}/query`, the body `query_workspace` sends)
through `LogsQueryClient.send_request`: the SDK's pipeline still authenticates and traces, but does not retry
(the client is built with `retry_total=0`). Limits, pauses and retries are the process's rate-and-retry engine's
(`tibridge.common.pacing.Engine`, fixed at Log Analytics' documented limits): every attempt of every query of the
process goes through its one `Pacer`, and each query has one budget of attempts. It reads the JSON answer itself:
the SDK's result models convert every cell through a generic model layer, which cost about 0.3 ms per row (the
bulk of a 50,000-row pass); here rows stay plain lists and become dicts one at a time, as the row reader takes
them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpRequest
from azure.monitor.query.aio import LogsQueryClient

from tibridge.collector.kql import COUNT_COLUMN, QuerySpec, build_count_query, build_query
from tibridge.collector.rows import Row
from tibridge.collector.settings import LogAnalyticsSettings
from tibridge.collector.windows import Bin, Window
from tibridge.common.http import cut_short, retry_of_status
from tibridge.common.pacing import Engine, RetriesExhausted, Retry

log = logging.getLogger(__name__)
# Time the service gets beyond its own query limit before we give up on the connection.
_TRANSPORT_GRACE_SECONDS = 30.0
_NO_CONTENT = 204
# A connection that failed or timed out is retried (as an overload); any other exception is not ours to retry.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, ServiceRequestError, ServiceResponseError)


@dataclass(frozen=True)
class Answer:
    """One attempt's answer as far as the adapter read it."""

    status: int
    body: bytes
    retry_after: str | None = None
    # The body was longer than the caller's byte budget; it was not read (and `body` is empty).
    over_budget: bool = False


def judge_answer(answer: Answer) -> Retry | None:
    """The engine's reading of an answer: 429 and 5xx are retried (honouring Retry-After), and so is a 200 whose
    body was cut short on the way; any other answer stands (a body that is no JSON at all, e.g. a proxy's page,
    is a clear error)."""
    return cut_short(answer.status, answer.body) or retry_of_status(answer.status, answer.retry_after)


@dataclass(frozen=True)
class WindowRows:
    """A window's answer: rows as the service sends them (a list of values per row, in `columns` order)."""

    columns: Sequence[str]
    values: Sequence[Sequence[Any]]
    # False when the service stopped early (a partial result) or the answer was past the byte budget: the
    # values are then at most a part of the window.
    complete: bool

    def __len__(self) -> int:
        return len(self.values)

    def rows(self) -> Iterator[Row]:
        """Each row as a mapping from column name to value, made as it is asked for."""
        columns = self.columns
        for values in self.values:
            yield dict(zip(columns, values, strict=False))

    @classmethod
    def of(cls, rows: Sequence[Row], *, complete: bool = True) -> WindowRows:
        """From rows given as mappings (every column any of them has)."""
        columns = list(dict.fromkeys(name for row in rows for name in row))
        return cls(columns, [[row.get(name) for name in columns] for row in rows], complete)


NO_ROWS = WindowRows((), (), complete=True)


class IndicatorSource(Protocol):
    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        """The newest row per indicator in the window, oldest first; an answer longer than `max_bytes` is not
        read but reported incomplete with no rows. Raises `SourceError` when the service cannot answer."""
        ...

    async def count(self, window: Window, bin_size: timedelta) -> Sequence[Bin]:
        """Rows per `bin_size` bin (bins count from 0001-01-01) of the window, oldest first; empty bins left
        out. Raises `SourceError` when the service cannot answer."""
        ...


class SourceError(Exception):
    """Log Analytics refused or kept failing; the message says what to check."""


class LogAnalyticsSource:
    """Queries with the API's own time limit (`Prefer: wait=N`, our timeout a grace beyond it); plain http only
    to the sandbox (loopback, dev mode)."""

    def __init__(
        self, client: LogsQueryClient, settings: LogAnalyticsSettings, spec: QuerySpec, engine: Engine
    ) -> None:
        self._client = client
        self._settings = settings
        self._spec = spec
        self._engine = engine

    async def read(self, window: Window, *, max_bytes: int | None = None) -> WindowRows:
        answer = await self._query(build_query(self._spec, window.start, window.end), window, max_bytes)
        if answer.over_budget:
            return WindowRows((), (), complete=False)
        if answer.status == _NO_CONTENT:  # a workspace without any data (documented): zero rows, not an error
            return NO_ROWS
        body = _result_of(answer.body)
        columns, values = _table(body)
        # A partial result is still a 200, with the rows so far and an `error` (e.g. past 500,000 rows or ~64 MB).
        return WindowRows(columns, values, complete=not body.get("error"))

    async def count(self, window: Window, bin_size: timedelta) -> Sequence[Bin]:
        query = build_count_query(self._spec, window.start, window.end, bin_size)
        answer = await self._query(query, window, None)
        if answer.status == _NO_CONTENT:
            return []
        body = _result_of(answer.body)
        if body.get("error"):
            raise SourceError(
                "Log Analytics could not count the rows of "
                f"{window.start.isoformat()} → {window.end.isoformat()} ({_error_of(answer.body)[1] or 'partial'})"
            )
        try:
            return sorted(_bins(*_table(body)), key=lambda found: found.start)
        except (ValueError, KeyError, TypeError):
            raise SourceError(
                "Log Analytics answered a count with a table that is not one; check TIBRIDGE_LOGANALYTICS_ENDPOINT"
            ) from None

    async def _query(self, query: str, window: Window, max_bytes: int | None) -> Answer:
        body = {"query": query, "timespan": _timespan(window)}
        try:
            answer = await self._engine.call(lambda: self._post(body, max_bytes), judge_answer)
        except ClientAuthenticationError as error:
            first_line = (error.message or "").splitlines()[0] if error.message else type(error).__name__
            raise SourceError(
                f"no token for Log Analytics ({first_line}); check TIBRIDGE_CREDENTIAL and the workload or "
                "managed identity"
            ) from None
        except RetriesExhausted as error:
            why = (
                f"kept failing ({error.cause}) after {error.attempts} attempts"
                if error.budget_spent
                else f"asked us to wait longer than {self._engine.policy.max_retry_after_seconds:.0f}s ({error.cause})"
            )
            raise SourceError(
                f"Log Analytics {why}; check the service health and TIBRIDGE_LOGANALYTICS_ENDPOINT, then run the "
                "collector again (the watermark did not move)"
            ) from None
        if answer.status >= 400:
            raise SourceError(_refusal(answer, self._settings.workspace_id))
        return answer

    async def _post(self, body: dict[str, Any], max_bytes: int | None) -> Answer:
        timeout = self._settings.query_timeout_seconds
        request = HttpRequest(
            "POST", f"/workspaces/{self._settings.workspace_id}/query", json=body, headers={"Prefer": f"wait={timeout}"}
        )
        extra: dict[str, Any] = {"enforce_https": False} if self._settings.over_http else {}
        async with asyncio.timeout(timeout + _TRANSPORT_GRACE_SECONDS):
            response = await self._client.send_request(
                request,
                stream=True,
                read_timeout=timeout + _TRANSPORT_GRACE_SECONDS / 2,
                connection_timeout=10,
                **extra,
            )
            try:
                retry_after = response.headers.get("Retry-After")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.iter_bytes():
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        return Answer(response.status_code, b"", retry_after, over_budget=True)
                    chunks.append(chunk)
            finally:
                await response.close()
        return Answer(response.status_code, b"".join(chunks), retry_after)


def _timespan(window: Window) -> str:
    return f"{_iso(window.start)}/{_iso(window.end)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _result_of(content: bytes) -> Mapping[str, Any]:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise SourceError(
            "Log Analytics answered with a body that is not a query result; check TIBRIDGE_LOGANALYTICS_ENDPOINT"
        )
    return body


def _table(body: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The first table's column names and rows (none when there is no table)."""
    try:
        tables = body.get("tables") or []
        if not tables:
            return [], []
        columns = [str(column["name"]) for column in tables[0]["columns"]]
        rows = tables[0]["rows"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise TypeError("rows are not lists")
    except (KeyError, TypeError, AttributeError, IndexError):
        raise SourceError(
            "Log Analytics answered with a body that is not a query result; check TIBRIDGE_LOGANALYTICS_ENDPOINT"
        ) from None
    return columns, rows


def _bins(columns: list[str], rows: list[list[Any]]) -> Iterator[Bin]:
    at, count = columns.index("TimeGenerated"), columns.index(COUNT_COLUMN)
    for row in rows:
        start = datetime.fromisoformat(row[at])
        rows_in_bin = row[count]
        if isinstance(rows_in_bin, bool) or not isinstance(rows_in_bin, int) or rows_in_bin < 0:
            raise TypeError("a count is not a non-negative integer")
        yield Bin(start.astimezone(UTC) if start.tzinfo else start.replace(tzinfo=UTC), rows_in_bin)


def _error_of(content: bytes) -> tuple[str, str]:
    """(code, message) of an error body; the message is the innermost one, as the SDK reports it."""
    try:
        error = json.loads(content)["error"]
        code = str(error.get("code", ""))
        while isinstance(error.get("innererror"), dict):
            error = error["innererror"]
        return code, str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return "", ""


def _refusal(answer: Answer, workspace_id: str) -> str:
    code, detail = _error_of(answer.body)
    status = answer.status
    if status in (401, 403):
        return (
            f"Log Analytics refused access ({status} {code}); grant the collector's identity "
            "Log Analytics Reader on the workspace, or check TIBRIDGE_CREDENTIAL"
        )
    if status == 404:
        return f"Log Analytics has no workspace {workspace_id}; check TIBRIDGE_LOGANALYTICS_WORKSPACE_ID"
    if status == 400:
        return (
            f"Log Analytics rejected the query ({code}: {detail}); check TIBRIDGE_COLLECTOR_TABLE "
            "(the legacy table may not exist in this workspace)"
        )
    return f"Log Analytics answered {status} ({code}: {detail}); the watermark did not move"
