"""The collector's queries on the common rate-and-retry engine (`query_engine`): Log Analytics' documented limits
as fixed caps (5 in flight, 200 per 30 s, retries included), one budget of attempts per query, and a Retry-After
that holds back every query of the process. All on the manual clock, through the real source adapter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from azure.core.rest import HttpRequest

from tests.fixtures.clock import ManualClock
from tests.fixtures.collector import ANCHOR, WORKSPACE
from tibridge.collector.app import query_engine
from tibridge.collector.kql import IndicatorTable, QuerySpec
from tibridge.collector.settings import LogAnalyticsSettings
from tibridge.collector.source import LogAnalyticsSource, SourceError
from tibridge.collector.windows import Window

RESULT = json.dumps({"tables": [{"name": "PrimaryResult", "columns": [{"name": "Id"}], "rows": [["i--1"]]}]})


def window(hours_back: int) -> Window:
    return Window(ANCHOR - timedelta(hours=hours_back + 1), ANCHOR - timedelta(hours=hours_back))


@dataclass
class Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = RESULT.encode()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        yield self.body

    async def close(self) -> None:
        pass


@dataclass
class LogAnalytics:
    """Stands in for `LogsQueryClient.send_request`: records when each request was sent and how many were in
    flight; answers 200 unless `answer` says otherwise; holds every request until `gate` opens."""

    clock: ManualClock
    answer: Any = None  # a callable (requests sent so far, the request) -> Response, or None for 200
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[float] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def send_request(self, request: HttpRequest, **kwargs: Any) -> Response:
        self.sent.append(self.clock.monotonic())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            return self.answer(len(self.sent), request) if self.answer else Response(200)
        finally:
            self.in_flight -= 1


def source_on(service: LogAnalytics, clock: ManualClock, **settings: Any) -> LogAnalyticsSource:
    values: dict[str, Any] = {"workspace_id": WORKSPACE, "query_attempts": 4, "retry_base_delay_seconds": 1.0}
    loganalytics = LogAnalyticsSettings(**{**values, **settings})
    spec = QuerySpec(IndicatorTable.NEW, ("Microsoft Defender Threat Intelligence",), ("url:value",))
    return LogAnalyticsSource(service, loganalytics, spec, query_engine(loganalytics, clock))  # type: ignore[arg-type]


async def test_a_429_storm_spends_the_querys_attempts_once(clock: ManualClock) -> None:
    service = LogAnalytics(clock, answer=lambda *_: Response(429, {"Retry-After": "2"}))
    with pytest.raises(SourceError, match=r"kept failing \(429\) after 5 attempts"):
        await source_on(service, clock, query_attempts=5).read(window(0))
    # Five requests in all: nothing retries underneath the engine, and each wait was the announced one.
    assert len(service.sent) == 5
    assert [round(later - earlier, 3) for earlier, later in zip(service.sent, service.sent[1:], strict=False)] == [
        2.0
    ] * 4


async def test_each_query_has_its_own_budget_and_a_failing_one_spends_no_other_querys(clock: ManualClock) -> None:
    failing = json.dumps(window(0).start.isoformat())[1:14]  # the failing window's date and hour

    def answer(sent: int, request: HttpRequest) -> Response:
        return Response(503) if json.loads(request.content)["timespan"].startswith(failing) else Response(200)

    service = LogAnalytics(clock, answer=answer)
    source = source_on(service, clock, query_attempts=3)
    reads = [source.read(window(hours)) for hours in range(4)]
    first, *others = await asyncio.gather(*reads, return_exceptions=True)
    assert isinstance(first, SourceError)
    assert "(503) after 3 attempts" in str(first)
    assert all(not isinstance(result, BaseException) and result.complete for result in others)
    assert len(service.sent) == 3 + 3


async def test_a_retry_after_holds_back_every_query_of_the_process(clock: ManualClock) -> None:
    def answer(sent: int, _: HttpRequest) -> Response:
        return Response(429, {"Retry-After": "7"}) if sent == 1 else Response(200)

    service = LogAnalytics(clock, answer=answer)
    source = source_on(service, clock)
    # The first read is sent (and throttled) before the others ask: they are other callers of the same engine.
    await asyncio.gather(*(source.read(window(hours)) for hours in range(5)))
    announced, *after = service.sent
    assert len(after) == 5  # the retry and four other queries
    assert all(moment >= announced + 7 for moment in after), service.sent


async def test_never_more_queries_in_flight_than_the_cap(clock: ManualClock) -> None:
    service = LogAnalytics(clock)
    service.gate.clear()
    source = source_on(service, clock)  # the default: Log Analytics' 5
    reads = [asyncio.create_task(source.read(window(hours))) for hours in range(23)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert (len(service.sent), service.in_flight) == (5, 5)
    service.gate.set()
    await asyncio.gather(*reads)
    assert (len(service.sent), service.peak_in_flight) == (23, 5)


@pytest.mark.parametrize("per_window", [3, 20, 200])
async def test_never_more_queries_per_30_seconds_than_the_cap_retries_included(
    clock: ManualClock, per_window: int
) -> None:
    # Every fourth request is a 500 unless its query failed before (retried after a short backoff): retries
    # count against the window too.
    failed: set[str] = set()

    def answer(sent: int, request: HttpRequest) -> Response:
        timespan = json.loads(request.content)["timespan"]
        if sent % 4 or timespan in failed:
            return Response(200)
        failed.add(timespan)
        return Response(500)

    service = LogAnalytics(clock, answer=answer)
    source = source_on(service, clock, requests_per_30_seconds=per_window, retry_base_delay_seconds=0.01)
    queries = 3 * per_window
    await asyncio.gather(*(source.read(window(hours)) for hours in range(queries)))
    sent = service.sent
    assert len(sent) > queries
    assert max(sum(1 for other in sent if moment - 30 < other <= moment) for moment in sent) <= per_window
    # The cap, not more, holds the queries back: the last one leaves within a window's worth of the cap's pace.
    assert sent[-1] <= 31 * (len(sent) / per_window)
