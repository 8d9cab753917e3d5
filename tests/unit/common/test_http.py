"""HTTP for the engine: Retry-After in both forms, and what each status means to it."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tibridge.common.http import cut_short, judge_response, parse_retry_after
from tibridge.common.pacing import Signal

NOW = datetime(2026, 11, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Sun, 15 Nov 2026 12:00:30 GMT", 30.0),
        ("Sun, 15 Nov 2026 11:59:00 GMT", 0.0),  # already past
        ("soon", None),
        ("inf", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after_in_delta_seconds_or_as_an_http_date(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "signal"),
    [(429, Signal.THROTTLED), (503, Signal.OVERLOADED), (504, Signal.OVERLOADED), (500, Signal.NEUTRAL)],
)
def test_what_each_retryable_status_says_about_capacity(status: int, signal: Signal) -> None:
    retry = judge_response(httpx.Response(status, headers={"Retry-After": "2"}))
    assert retry is not None
    assert (retry.cause, retry.retry_after, retry.signal) == (str(status), 2.0, signal)


@pytest.mark.parametrize("status", [200, 202, 400, 401, 403, 404])
def test_other_answers_stand(status: int) -> None:
    assert judge_response(httpx.Response(status)) is None


@pytest.mark.parametrize(
    ("status", "body", "retried"),
    [
        (200, b'{"tables": [{"name": "PrimaryResult"', True),
        (202, b'[{"id": 1}, {"id"', True),
        (200, b'{"tables": []}\n', False),
        (200, b"[]", False),
        (204, b"", False),
        (200, b"<html>proxy error</html>", False),  # no JSON at all: stands, for the caller to report
        (500, b'{"error": ', False),  # a 5xx is the status's to judge
    ],
)
def test_a_2xx_whose_json_does_not_end_was_cut_short(status: int, body: bytes, retried: bool) -> None:
    assert (cut_short(status, body) is not None) is retried
