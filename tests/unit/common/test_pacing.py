"""The rate-and-retry engine: the control law, the pacer on a manual clock, and one budget per operation."""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.fixtures.clock import ManualClock
from tibridge.common.pacing import (
    RATE_CUT,
    Attempts,
    Engine,
    PaceLimits,
    Pacer,
    RateControl,
    RequestWindow,
    RetriesExhausted,
    Retry,
    RetryPolicy,
    Signal,
)

POLICY = RetryPolicy(max_attempts=4, base_delay_seconds=0.1, max_delay_seconds=1.0)


def saturated(control: RateControl, seconds: float, *, start: float = 0.0, cost: float = 10.0) -> float:
    """Clean answers to rate-bound requests for `seconds` of traffic at the controller's own rate."""
    now = start
    while now < start + seconds:
        control.clean(now, cost, rate_bound=True, slot_bound=False)
        control.delivered(now, cost)
        now += cost / control.rate
    return now


# -- the control law ----------------------------------------------------------------------------------------


def test_the_rate_doubles_quickly_until_the_first_429() -> None:
    control = RateControl(PaceLimits(initial_rate=100), now=0)
    saturated(control, 1.0)
    assert 800 < control.rate < 3_000


def test_a_limit_that_holds_nothing_back_does_not_grow() -> None:
    control = RateControl(PaceLimits(initial_rate=100), now=0)
    for moment in range(100):
        control.clean(moment, 10, rate_bound=False, slot_bound=False)
    assert (control.rate, control.parallel_limit) == (100, 1)


def test_a_429_cuts_the_rate_below_what_was_delivered_and_once_per_round() -> None:
    control = RateControl(PaceLimits(initial_rate=100), now=0)
    now = saturated(control, 2.0)
    refused = control.rate
    epoch = control.rate_epoch
    assert control.throttled(now, epoch, refused) is True
    assert control.rate < refused
    assert control.ceiling is not None
    assert control.rate == pytest.approx(RATE_CUT * control.ceiling)
    # Answers to requests sent before the cut: the cut already answered them.
    cut = control.rate
    assert control.throttled(now, epoch, refused) is False
    assert control.rate == cut


def test_after_a_429_the_rate_returns_to_the_ceiling_and_probes_past_it_slowly() -> None:
    control = RateControl(PaceLimits(initial_rate=1_000), now=0)
    control.delivered(0.5, 500)
    control.throttled(1.0, control.rate_epoch, 1_000)
    ceiling = control.ceiling
    assert ceiling == 500
    now = saturated(control, 2.0, start=1.0)
    assert 0.97 * ceiling < control.rate < 1.1 * ceiling
    saturated(control, 5.0, start=now)
    assert control.rate < 1.5 * ceiling


def test_hard_caps_hold_and_fixed_limits_never_move() -> None:
    capped = RateControl(PaceLimits(initial_rate=100, max_rate=150, max_parallel=3), now=0)
    saturated(capped, 5.0)
    for _ in range(10):
        capped.clean(0, 1, rate_bound=False, slot_bound=True)
    assert (capped.rate, capped.parallel_limit) == (150, 3)
    fixed = RateControl(PaceLimits.fixed(40, parallel=2), now=0)
    saturated(fixed, 5.0)
    fixed.throttled(5.0, fixed.rate_epoch, 40)
    fixed.overloaded(fixed.parallel_epoch)
    assert (fixed.rate, fixed.parallel_limit) == (40, 2)


def test_requests_in_flight_grow_while_slots_hold_them_back_and_shrink_on_overload() -> None:
    control = RateControl(PaceLimits(initial_rate=100, initial_parallel=2), now=0)
    for _ in range(6):
        control.clean(0, 1, rate_bound=False, slot_bound=True)
    assert control.parallel_limit == 8
    assert control.overloaded(control.parallel_epoch) is True
    assert control.parallel_limit == 6
    assert control.overloaded(control.parallel_epoch - 1) is False
    for _ in range(7):  # past the first overload: one more per round of answers
        control.clean(0, 1, rate_bound=False, slot_bound=True)
    assert control.parallel_limit == 7


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="rates"):
        PaceLimits(initial_rate=0)
    with pytest.raises(ValueError, match="max_rate"):
        PaceLimits(initial_rate=10, min_rate=5, max_rate=1)
    with pytest.raises(ValueError, match="initial_parallel"):
        PaceLimits(initial_rate=10, initial_parallel=5, max_parallel=2)
    with pytest.raises(ValueError, match="window"):
        RequestWindow(0, 30)


# -- the pacer ----------------------------------------------------------------------------------------------


async def test_the_pacer_spaces_requests_at_its_rate() -> None:
    clock = ManualClock()
    pacer = Pacer("api", PaceLimits.fixed(10), clock)
    for _ in range(21):
        (await pacer.acquire()).release(Signal.CLEAN)
    # The first goes at once, then one per tenth of a second.
    assert clock.monotonic() == pytest.approx(2.0, abs=0.01)


async def test_a_pause_holds_every_caller_until_the_window_ends() -> None:
    clock = ManualClock()
    pacer = Pacer("api", PaceLimits(initial_rate=1_000), clock)
    permit = await pacer.acquire()
    permit.release(Signal.THROTTLED, pause_seconds=5)
    assert pacer.paused_for == 5
    await pacer.acquire()
    assert clock.monotonic() >= 5
    assert pacer.state().rate_cuts == 1


async def test_a_request_waits_for_a_free_place_in_flight() -> None:
    clock = ManualClock()
    pacer = Pacer("api", PaceLimits(initial_rate=1_000, initial_parallel=1, max_parallel=4), clock)
    first = await pacer.acquire()
    second = asyncio.create_task(pacer.acquire())
    await asyncio.sleep(0.01)
    assert not second.done()
    first.release(Signal.CLEAN)
    waited = await second
    assert waited.slot_bound
    waited.release(Signal.CLEAN)
    assert pacer.state().parallel_limit == 2


async def test_a_request_window_counts_each_request_from_its_send_until_a_window_after_its_answer() -> None:
    """3 per 10 s: the API counts a request from its arrival, somewhere between our send and its answer."""
    clock = ManualClock()
    pacer = Pacer("api", PaceLimits.fixed(math.inf, window=RequestWindow(3, 10)), clock)
    held = [await pacer.acquire() for _ in range(3)]
    fourth = asyncio.create_task(pacer.acquire())
    clock.advance(60)  # all three still in flight: however long they take, their places stay taken
    await asyncio.sleep(0.01)
    assert not fourth.done()
    held[0].release(Signal.CLEAN)  # answered at 60: its place is free at 70
    clock.advance(4)
    held[1].release(Signal.CLEAN)  # answered at 64: free at 74
    (await fourth).release(Signal.CLEAN)
    assert clock.monotonic() == pytest.approx(70)
    await pacer.acquire()
    assert clock.monotonic() == pytest.approx(74)
    assert pacer.state().rate_cuts == 0


async def test_a_batch_that_did_not_fill_gives_its_tokens_back() -> None:
    clock = ManualClock()
    pacer = Pacer("api", PaceLimits.fixed(20), clock)
    (await pacer.acquire(20)).release(Signal.CLEAN)
    permit = await pacer.acquire(20)  # a second's worth of tokens
    assert clock.monotonic() == pytest.approx(1.0)
    permit.shrink(2)
    permit.release(Signal.CLEAN)
    await pacer.acquire(18)
    assert clock.monotonic() == pytest.approx(1.0)


# -- the engine: one operation, one budget ------------------------------------------------------------------


class Api:
    """Answers scripted statuses (an int) or raises (an exception), then 200."""

    def __init__(self, clock: ManualClock, *script: int | BaseException) -> None:
        self.clock = clock
        self.script = list(script)
        self.sent_at: list[float] = []

    async def __call__(self) -> int:
        self.sent_at.append(self.clock.monotonic())
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step
        return 200


def judge(status: int) -> Retry | None:
    if status == 429:
        return Retry("429", retry_after=3, signal=Signal.THROTTLED)
    if status >= 500:
        return Retry(str(status), signal=Signal.OVERLOADED if status == 503 else Signal.NEUTRAL)
    return None


def engine(clock: ManualClock, limits: PaceLimits | None = None) -> Engine:
    return Engine("api", Pacer("api", limits or PaceLimits(initial_rate=1_000), clock), POLICY, clock)


async def test_an_operation_is_retried_until_it_is_answered() -> None:
    clock = ManualClock()
    api = Api(clock, 503, TimeoutError(), 500)
    subject = engine(clock)
    assert await subject.call(api, judge) == 200
    assert len(api.sent_at) == 4
    counts = subject.counts()
    assert (counts.requests, counts.retries, counts.throttled) == (4, 3, 0)
    # The 503 and the timeout each cut the requests in flight (to the floor of one): each came to a request
    # sent after the previous cut.
    assert (counts.pace.parallel_cuts, counts.pace.parallel_limit) == (2, 1)


async def test_an_operation_gives_up_after_its_attempts_with_the_last_answer() -> None:
    clock = ManualClock()
    api = Api(clock, *([500] * 10))
    with pytest.raises(RetriesExhausted, match="after 4 attempts") as exhausted:
        await engine(clock).call(api, judge)
    assert len(api.sent_at) == POLICY.max_attempts
    assert (exhausted.value.last, exhausted.value.budget_spent) == (500, True)


async def test_one_budget_can_span_several_calls() -> None:
    clock = ManualClock()
    subject = engine(clock)
    budget = Attempts(POLICY.max_attempts)
    await subject.call(Api(clock, 500, 500), judge, attempts=budget)
    with pytest.raises(RetriesExhausted):
        await subject.call(Api(clock, 500, 500, 500), judge, attempts=budget)
    assert budget.used == 4


async def test_a_429_pauses_every_caller_for_its_retry_after() -> None:
    clock = ManualClock()
    subject = engine(clock)
    throttled = Api(clock, 429)
    other = Api(clock)
    await subject.call(throttled, judge)
    await subject.call(other, judge)
    first, retried = throttled.sent_at
    assert retried >= first + 3
    assert other.sent_at[0] >= first + 3
    assert subject.counts().throttled == 1


async def test_a_retry_after_beyond_the_policy_gives_the_work_back_and_still_pauses() -> None:
    clock = ManualClock()
    subject = engine(clock)

    def patient(status: int) -> Retry | None:
        return Retry("429", retry_after=3_600, signal=Signal.THROTTLED) if status == 429 else None

    with pytest.raises(RetriesExhausted, match="3600s") as exhausted:
        await subject.call(Api(clock, 429), patient)
    assert exhausted.value.budget_spent is False
    assert subject.pacer.paused_for > 3_000


async def test_an_unexpected_exception_is_not_retried_and_frees_its_place() -> None:
    clock = ManualClock()
    subject = engine(clock, PaceLimits(initial_rate=1_000, max_parallel=1))
    with pytest.raises(KeyError):
        await subject.call(Api(clock, KeyError("bug")), judge)
    assert subject.pacer.state().in_flight == 0
    assert await subject.call(Api(clock), judge) == 200
