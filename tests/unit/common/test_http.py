"""HTTP for the engine: Retry-After in both forms, what each status means, and `ResilientSender`'s shape kept
over `Engine.call` (the publisher still sends through it)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.fixtures.clock import ManualClock
from tibridge.common.http import RateLimiter, ResilientSender, RetriesExhausted, judge_response, parse_retry_after
from tibridge.common.pacing import RetryPolicy, Signal

POLICY = RetryPolicy(max_attempts=3, base_delay_seconds=0.1, max_delay_seconds=0.5)
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


class Server:
    def __init__(self, clock: ManualClock, *answers: httpx.Response | Exception) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.sent_at: list[float] = []

    async def __call__(self) -> httpx.Response:
        self.sent_at.append(self.clock.monotonic())
        answer = self.answers.pop(0) if self.answers else httpx.Response(200)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_sender_retries_until_an_answer_stands() -> None:
    clock = ManualClock()
    server = Server(clock, httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(400))
    response = await ResilientSender("api", POLICY, clock=clock).send(server)
    assert response.status_code == 400
    assert len(server.sent_at) == 3


async def test_the_last_retryable_answer_is_returned_for_the_caller_to_read() -> None:
    clock = ManualClock()
    server = Server(clock, *(httpx.Response(503, json={"message": "down"}) for _ in range(5)))
    response = await ResilientSender("api", POLICY, clock=clock).send(server)
    assert response.status_code == 503
    assert len(server.sent_at) == POLICY.max_attempts


async def test_a_transport_error_on_the_last_attempt_gives_up() -> None:
    clock = ManualClock()
    server = Server(clock, *(httpx.ReadTimeout("slow") for _ in range(5)))
    with pytest.raises(RetriesExhausted, match="ReadTimeout"):
        await ResilientSender("api", POLICY, clock=clock).send(server)


async def test_a_long_retry_after_gives_up_at_once() -> None:
    clock = ManualClock()
    server = Server(clock, httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RetriesExhausted, match="3600s"):
        await ResilientSender("api", POLICY, clock=clock).send(server)
    assert len(server.sent_at) == 1


async def test_a_fixed_rate_limiter_paces_every_attempt_and_a_429_pauses_it() -> None:
    clock = ManualClock()
    limiter = RateLimiter(2, clock=clock)
    sender = ResilientSender("api", POLICY, limiter, clock)
    server = Server(clock, httpx.Response(429, headers={"Retry-After": "4"}))
    await sender.send(server)
    await sender.send(server, cost=2)
    first, retried, second = server.sent_at
    assert retried >= first + 4
    assert second >= retried + 0.5  # one token left after the retry; the second request costs two
    assert limiter.state().rate == 2  # a fixed ceiling does not adapt
