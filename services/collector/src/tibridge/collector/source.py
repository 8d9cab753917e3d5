"""Where rows come from: a small port, and its Log Analytics adapter over azure-monitor-query's async client.

The adapter sends the query API's request (`POST /v1/workspaces/{id}/query`, the body `query_workspace` sends)
through `LogsQueryClient.send_request`: the SDK's pipeline still authenticates and traces. Retries (429, 5xx,
timeouts) are this adapter's, bounded and honouring Retry-After. It reads the JSON answer itself: the SDK's
result models convert every cell through a generic model layer, which cost about 0.3 ms per row (the bulk of
a 50,000-row pass); here rows stay plain dicts and the row reader parses only the columns it uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpRequest
from azure.monitor.query.aio import LogsQueryClient

from tibridge.collector.kql import QuerySpec, build_query
from tibridge.collector.rows import Row
from tibridge.collector.settings import LogAnalyticsSettings
from tibridge.collector.windows import Window
from tibridge.common.clock import Clock
from tibridge.common.http import RETRYABLE_STATUS, RetryPolicy, parse_retry_after
from tibridge.common.metrics import Tally

log = logging.getLogger(__name__)
# Time the service gets beyond its own query limit before we give up on the connection.
_TRANSPORT_GRACE_SECONDS = 30.0


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
class _Answer:
    status: int
    body: bytes
    retry_after: str | None


class LogAnalyticsSource:
    """Reads windows with the query API's own time limit (`Prefer: wait=N`, our timeout a grace beyond it) and
    bounded retries on 429, 5xx and timeouts; plain http only to the sandbox (loopback, dev mode)."""

    def __init__(self, client: LogsQueryClient, settings: LogAnalyticsSettings, spec: QuerySpec, clock: Clock) -> None:
        self._client = client
        self._settings = settings
        self._spec = spec
        self._clock = clock
        self._retry = RetryPolicy(
            max_attempts=settings.query_attempts, base_delay_seconds=settings.retry_base_delay_seconds
        )
        self.retries = Tally("tibridge.collector.query_retries", "Log Analytics queries retried, by cause")

    async def read(self, window: Window) -> WindowRows:
        body = {"query": build_query(self._spec, window.start, window.end), "timespan": _timespan(window)}
        policy = self._retry
        cause = "none"
        for attempt in range(1, policy.max_attempts + 1):
            try:
                answer = await self._post(body)
            except ClientAuthenticationError as error:
                first_line = (error.message or "").splitlines()[0] if error.message else type(error).__name__
                raise SourceError(
                    f"no token for Log Analytics ({first_line}); check TIBRIDGE_CREDENTIAL and the workload or "
                    "managed identity"
                ) from None
            except (TimeoutError, ServiceRequestError, ServiceResponseError) as error:
                cause, delay = type(error).__name__, policy.backoff(attempt)
            else:
                if answer.status < 400:
                    return _window_rows(answer.body)
                if answer.status not in RETRYABLE_STATUS:
                    raise SourceError(_refusal(answer, self._settings.workspace_id))
                announced = parse_retry_after(answer.retry_after)
                cause, delay = str(answer.status), announced if announced is not None else policy.backoff(attempt)
            if attempt == policy.max_attempts or delay > policy.max_retry_after_seconds:
                break
            self.retries.add(cause=cause)
            log.warning("Log Analytics query failed (%s); retry %d in %.1fs", cause, attempt, delay)
            await self._clock.sleep(delay)
        raise SourceError(
            f"Log Analytics kept failing ({cause}) after {attempt} attempts; check the service health and "
            "TIBRIDGE_LOGANALYTICS_ENDPOINT, then run the collector again (the watermark did not move)"
        )

    async def _post(self, body: dict[str, Any]) -> _Answer:
        timeout = self._settings.query_timeout_seconds
        request = HttpRequest(
            "POST", f"/workspaces/{self._settings.workspace_id}/query", json=body, headers={"Prefer": f"wait={timeout}"}
        )
        extra: dict[str, Any] = {"enforce_https": False} if self._settings.over_http else {}
        async with asyncio.timeout(timeout + _TRANSPORT_GRACE_SECONDS):
            response = await self._client.send_request(
                request, read_timeout=timeout + _TRANSPORT_GRACE_SECONDS / 2, connection_timeout=10, **extra
            )
            content = await response.read()
        return _Answer(response.status_code, content, response.headers.get("Retry-After"))


def _timespan(window: Window) -> str:
    return f"{_iso(window.start)}/{_iso(window.end)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _window_rows(content: bytes) -> WindowRows:
    try:
        body = json.loads(content)
        tables = body.get("tables") or []
        rows: list[Row] = []
        if tables:
            columns = [column["name"] for column in tables[0]["columns"]]
            rows = [dict(zip(columns, row, strict=False)) for row in tables[0]["rows"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(
            "Log Analytics answered with a body that is not a query result; check TIBRIDGE_LOGANALYTICS_ENDPOINT"
        ) from None
    # A partial result is still a 200, with the rows so far and an `error` (e.g. past 500,000 rows or ~64 MB).
    return WindowRows(rows, complete=not body.get("error"))


def _error_of(content: bytes) -> tuple[str, str]:
    """(code, message) of an error body; the message is the innermost one, as the SDK reports it."""
    try:
        error = json.loads(content)["error"]
        code = str(error.get("code", ""))
        while isinstance(error.get("innererror"), dict):
            error = error["innererror"]
        return code, str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", ""


def _refusal(answer: _Answer, workspace_id: str) -> str:
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
