"""HTTP for the rate-and-retry engine (`tibridge.common.pacing`): what an HTTP answer means to it
(`judge_response`, `retry_of_status`, `parse_retry_after`) and the httpx client every API client uses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from tibridge.common.pacing import Retry, Signal

__all__ = [
    "HTTP_TRANSIENT",
    "RETRYABLE_STATUS",
    "async_client",
    "cut_short",
    "judge_response",
    "parse_retry_after",
    "retry_of_status",
]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that say the API has too much in flight (rather than one request failing): they cut concurrency.
_OVERLOAD_STATUS = frozenset({503, 504})
# Failures of the request itself (httpx's timeouts are TransportErrors), retried as overloads.
HTTP_TRANSIENT: tuple[type[BaseException], ...] = (httpx.TransportError, TimeoutError)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def retry_of_status(
    status: int, retry_after: str | None, *, cause: str | None = None, detail: str = ""
) -> Retry | None:
    """The engine's reading of an HTTP status: None when the answer stands, else how to retry it."""
    if status not in RETRYABLE_STATUS:
        return None
    if status == 429:
        signal = Signal.THROTTLED
    elif status in _OVERLOAD_STATUS:
        signal = Signal.OVERLOADED
    else:
        signal = Signal.NEUTRAL
    return Retry(cause or str(status), parse_retry_after(retry_after), signal, detail)


def cut_short(status: int, body: bytes) -> Retry | None:
    """A 2xx whose JSON object or array does not end was cut short on the way (a proxy, a dropped connection):
    retried like a 5xx. A cheap test, where parsing a large body twice is not; a body that is no JSON at all
    (e.g. a proxy's page) is not cut short and stands, for the caller to report."""
    if not 200 <= status < 300:
        return None
    text = body.strip()
    if (text[:1] == b"{" and text[-1:] != b"}") or (text[:1] == b"[" and text[-1:] != b"]"):
        return Retry("malformed", detail="the answer was cut short")
    return None


class StatusAnswer(Protocol):
    """What httpx's and azure-core's responses both offer."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def judge_response(response: StatusAnswer) -> Retry | None:
    """`Engine.call`'s judge for a plain HTTP request: 429 and 5xx are retried, any other answer stands."""
    return retry_of_status(response.status_code, response.headers.get("Retry-After"))


def async_client(base_url: str, *, timeout_seconds: float, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An httpx client with TLS verification on and an explicit timeout on every phase."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_seconds, connect=min(10.0, timeout_seconds)),
        headers=headers,
        verify=True,
        follow_redirects=False,
    )
