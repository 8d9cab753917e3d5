"""Fault decisions, the token bucket and the Retry-After ledger, over a clock the test moves."""

from __future__ import annotations

import pytest

from tibridge.sandbox.faults import (
    Api,
    FaultInjector,
    FaultKind,
    FaultSpec,
    FaultSpecError,
    RequestLimits,
    RetryAfterLedger,
    TokenBucket,
    merge_faults,
    parse_fault_flags,
)


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kinds(injector: FaultInjector, count: int, api: Api = "graph") -> list[FaultKind]:
    return [injector.decide(api).kind for _ in range(count)]


def test_the_same_seed_draws_the_same_faults() -> None:
    faults: dict[Api, FaultSpec] = {"graph": FaultSpec(p429=0.2, p500=0.2, p_drop=0.1)}
    first = kinds(FaultInjector(7, faults, Ticker()), 200)
    assert first == kinds(FaultInjector(7, faults, Ticker()), 200)
    assert first != kinds(FaultInjector(8, faults, Ticker()), 200)
    assert {FaultKind.NONE, FaultKind.THROTTLED, FaultKind.ERROR_500, FaultKind.DROP} <= set(first)


def test_probabilities_are_honoured_roughly() -> None:
    drawn = kinds(FaultInjector(7, {"graph": FaultSpec(p503=0.25)}, Ticker()), 4000)
    assert 0.22 < drawn.count(FaultKind.ERROR_503) / 4000 < 0.28


def test_latency_is_base_plus_jitter() -> None:
    injector = FaultInjector(7, {"threatstream": FaultSpec(latency_ms=50, jitter_ms=10)}, Ticker())
    delays = [injector.decide("threatstream").delay_seconds for _ in range(100)]
    assert all(0.05 <= delay < 0.06 for delay in delays)
    assert len(set(delays)) > 1


def test_batch_items_never_hang_drop_or_break_json() -> None:
    injector = FaultInjector(7, {"graph": FaultSpec(p_hang=0.4, p_drop=0.3, p_malformed=0.3)}, Ticker())
    assert {injector.decide_item("graph").kind for _ in range(100)} == {FaultKind.NONE}


def test_the_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2, capacity=2, now=0)
    assert bucket.take(0) == 0
    assert bucket.take(0) == 0
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0


def test_over_the_ceiling_answers_429_with_a_whole_second_retry_after() -> None:
    clock = Ticker()
    injector = FaultInjector(7, {"loganalytics": FaultSpec(rate_ceiling=5, burst=2)}, clock)
    assert kinds(injector, 2, "loganalytics") == [FaultKind.NONE, FaultKind.NONE]
    limited = injector.decide("loganalytics")
    assert (limited.kind, limited.retry_after) == (FaultKind.RATE_LIMITED, 1)
    clock.now = 0.2
    assert injector.decide("loganalytics").kind is FaultKind.NONE
    assert injector.decide("loganalytics", ceiling=False).kind is FaultKind.NONE


def test_the_ledger_counts_only_arrivals_after_the_grace_and_before_the_end() -> None:
    ledger = RetryAfterLedger(grace=0.2)
    ledger.announce("graph", now=10.0, seconds=2)
    assert not ledger.inside("graph", 10.1)
    assert ledger.inside("graph", 10.5)
    assert not ledger.inside("threatstream", 10.5)
    assert not ledger.inside("graph", 12.1)
    ledger.announce("graph", now=20.0, seconds=1)
    ledger.clear()
    assert not ledger.inside("graph", 20.5)


def test_partial_updates_change_only_the_named_fields() -> None:
    current = merge_faults({}, {"graph": {"p429": 0.1, "latency_ms": 5}})
    updated = merge_faults(current, {"graph": {"p429": 0.3}, "threatstream": {"p500": 1}})
    assert (updated["graph"].p429, updated["graph"].latency_ms) == (0.3, 5)
    assert updated["threatstream"].p500 == 1


@pytest.mark.parametrize(
    "patch",
    [
        {"nosuchapi": {"p429": 1}},
        {"graph": {"p429": 2}},
        {"graph": {"p429": 0.6, "p500": 0.6}},
        {"graph": {"bogus": 1}},
    ],
)
def test_invalid_faults_are_refused(patch: dict[str, object]) -> None:
    with pytest.raises(FaultSpecError):
        merge_faults({}, patch)


def test_cli_flags_become_a_patch() -> None:
    patch = parse_fault_flags(["graph.p429=0.1", "threatstream.latency_ms=50", "graph.retry_after_seconds=2"])
    assert patch == {"graph": {"p429": "0.1", "retry_after_seconds": "2"}, "threatstream": {"latency_ms": "50"}}
    assert merge_faults({}, patch)["graph"].retry_after_seconds == 2
    with pytest.raises(FaultSpecError):
        parse_fault_flags(["graph-p429"])


def test_request_limits_refuse_the_sixth_concurrent_and_past_the_window() -> None:
    """external-apis.md §1: 5 concurrent queries and 200 requests per 30 s per identity."""
    now = [0.0]
    limits = RequestLimits(5, 7, 30.0, lambda: now[0])
    assert [limits.admit() for _ in range(5)] == [None] * 5
    sixth = limits.admit()
    assert sixth is not None
    assert "concurrent" in sixth.message
    for _ in range(5):
        limits.release()
    assert limits.admit() is None
    assert limits.admit() is None
    limits.release()
    limits.release()
    now[0] = 12.0
    refused = limits.admit()
    assert refused is not None
    assert (refused.retry_after, "7 requests per 30 s" in refused.message) == (18, True)
    now[0] = 30.0
    assert limits.admit() is None  # the first seven arrivals left the window
    assert limits.peak == 5


def test_request_limits_can_be_switched_off() -> None:
    limits = RequestLimits(None, None, 30.0, lambda: 0.0)
    assert all(limits.admit() is None for _ in range(1000))


def test_every_fault_decided_is_reported_by_kind() -> None:
    reported: list[tuple[str, FaultKind]] = []
    spec = FaultSpec(p429=0.3, p500=0.3)
    injector = FaultInjector(5, {"graph": spec}, lambda: 0.0, lambda api, kind: reported.append((api, kind)))
    decisions = [injector.decide("graph") for _ in range(50)] + [injector.decide_item("graph") for _ in range(50)]
    faulted = [("graph", decision.kind) for decision in decisions if decision.kind is not FaultKind.NONE]
    assert reported == faulted
    assert {kind for _, kind in reported} == {FaultKind.THROTTLED, FaultKind.ERROR_500}
