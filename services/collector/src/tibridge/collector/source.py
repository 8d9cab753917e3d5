"""Where rows come from: a small port, and its Log Analytics adapter over azure-monitor-query's async client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.monitor.query import LogsQueryPartialResult, LogsTable
from azure.monitor.query.aio import LogsQueryClient
from opentelemetry import metrics

from tibridge.collector.kql import QuerySpec, build_query
from tibridge.collector.rows import Row
from tibridge.collector.windows import Window
from tibridge.common.clock import Clock
from tibridge.common.http import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)
_retries = metrics.get_meter("tibridge.collector").create_counter(
    "tibridge.collector.query_retries", description="Log Analytics queries retried, by cause"
)
_RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class WindowRows:
    rows: Sequence[Row]
    # False when the service stopped early (a partial result): the rows are then only a part of the window.
    complete: bool


class IndicatorSource(Protocol):
    async def read(self, window: Window) -> WindowRows:
        """The newest row per indicator in the window, oldest first; raises `SourceError` when it cannot."""
        ...


class SourceError(Exception):
    """Log Analytics refused or kept failing; the message says what to check."""


@dataclass(frozen=True)
class QueryOptions:
    timeout_seconds: float  # the service's own limit (Prefer: wait) and ours around each attempt
    retry: RetryPolicy  # our retries on 5xx and timeouts; the SDK retries 429 itself
    allow_http: bool  # the sandbox: plain http to loopback in dev mode


class LogAnalyticsSource:
    def __init__(
        self, client: LogsQueryClient, workspace_id: str, spec: QuerySpec, options: QueryOptions, clock: Clock
    ) -> None:
        self._client = client
        self._workspace_id = workspace_id
        self._spec = spec
        self._options = options
        self._clock = clock

    async def read(self, window: Window) -> WindowRows:
        query = build_query(self._spec, window.start, window.end)
        policy = self._options.retry
        for attempt in range(1, policy.max_attempts + 1):
            try:
                result = await self._query(query, window)
            except (TimeoutError, ServiceRequestError, ServiceResponseError) as error:
                cause, delay = type(error).__name__, policy.backoff(attempt)
            except HttpResponseError as error:
                if error.status_code not in _RETRYABLE_STATUS:
                    raise SourceError(_refusal(error, self._workspace_id)) from None
                cause = str(error.status_code)
                headers = getattr(error.response, "headers", None) or {}
                retry_after = parse_retry_after(headers.get("Retry-After"))
                delay = retry_after if retry_after is not None else policy.backoff(attempt)
            else:
                if isinstance(result, LogsQueryPartialResult):
                    return WindowRows(_rows(result.partial_data or []), complete=False)
                return WindowRows(_rows(result.tables), complete=True)
            if attempt == policy.max_attempts or delay > policy.max_retry_after_seconds:
                break
            _retries.add(1, {"cause": cause})
            log.warning("Log Analytics query failed (%s); retry %d in %.1fs", cause, attempt, delay)
            await self._clock.sleep(delay)
        raise SourceError(
            f"Log Analytics kept failing ({cause}) after {attempt} attempts; check the service health and "
            "TIBRIDGE_LOGANALYTICS_ENDPOINT, then run the collector again (the watermark did not move)"
        )

    async def _query(self, query: str, window: Window) -> Any:
        timeout = self._options.timeout_seconds
        extra: dict[str, Any] = {"enforce_https": False} if self._options.allow_http else {}
        async with asyncio.timeout(timeout + 30):  # the service answers by `timeout`; this bounds a hung socket
            return await self._client.query_workspace(
                self._workspace_id,
                query,
                timespan=(window.start, window.end),
                server_timeout=int(timeout),
                read_timeout=timeout + 15,
                connection_timeout=min(timeout, 30.0),
                **extra,
            )


def _rows(tables: Sequence[LogsTable]) -> list[Row]:
    if not tables:
        return []
    table = tables[0]
    return [dict(zip(table.columns, row, strict=False)) for row in table.rows]


def _refusal(error: HttpResponseError, workspace_id: str) -> str:
    detail = getattr(error.model, "message", None) or (error.reason or "")
    code = getattr(error.model, "code", None) or str(error.status_code)
    if error.status_code in (401, 403):
        return (
            f"Log Analytics refused access ({error.status_code} {code}); grant the collector's identity "
            "Log Analytics Reader on the workspace, or check TIBRIDGE_CREDENTIAL"
        )
    if error.status_code == 404:
        return f"Log Analytics has no workspace {workspace_id}; check TIBRIDGE_LOGANALYTICS_WORKSPACE_ID"
    if error.status_code == 400:
        return (
            f"Log Analytics rejected the query ({code}: {detail}); check TIBRIDGE_COLLECTOR_TABLE "
            "(the legacy table may not exist in this workspace)"
        )
    return f"Log Analytics answered {error.status_code} ({code}: {detail}); the watermark did not move"
