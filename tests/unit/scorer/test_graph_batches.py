"""Lookup coalescing into Graph requests, paced by the engine: what happens to lookups Graph defers or refuses,
one attempt budget per lookup, and the pacer finding a ceiling it was never told."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.fixtures.scorer import FAST_RETRIES, MALICIOUS, Answer, GraphRig, until
from tibridge.common.consumer import DependencyUnavailable, PermanentFailure
from tibridge.common.pacing import PaceLimits
from tibridge.scorer.app import pace_limits
from tibridge.scorer.graph_batches import GRAPH_REJECTED_HOST, LookupFailed
from tibridge.scorer.settings import GraphSettings, LookupMode


async def test_concurrent_lookups_share_batches_of_twenty(graph_rig: GraphRig) -> None:
    hosts = [f"h{n}.example" for n in range(45)]
    graph_rig.graph.reputations["h7.example"] = MALICIOUS
    batcher = graph_rig.batcher(linger_seconds=0.05)
    try:
        results = await asyncio.gather(*(batcher.lookup(host) for host in hosts))
    finally:
        await batcher.close()
    assert results[7] == MALICIOUS
    assert sum(result is not None for result in results) == 1
    assert sorted(len(batch) for batch in graph_rig.graph.batches) == [5, 20, 20]


async def test_a_lone_lookup_leaves_after_the_linger(graph_rig: GraphRig) -> None:
    batcher = graph_rig.batcher(linger_seconds=0.01)
    try:
        assert await batcher.lookup("alone.example") is None
    finally:
        await batcher.close()
    assert graph_rig.graph.batches == [["alone.example"]]


async def test_the_batch_size_can_be_smaller(graph_rig: GraphRig) -> None:
    batcher = graph_rig.batcher(batch_size=5)
    try:
        await asyncio.gather(*(batcher.lookup(f"h{n}.example") for n in range(12)))
    finally:
        await batcher.close()
    assert sorted(len(batch) for batch in graph_rig.graph.batches) == [2, 5, 5]


async def test_single_mode_sends_one_get_per_lookup_with_the_same_retries(graph_rig: GraphRig) -> None:
    graph_rig.graph.reputations["evil.example"] = MALICIOUS
    graph_rig.graph.script("flaky.example", Answer(503))
    batcher = graph_rig.batcher(mode=LookupMode.SINGLE)
    try:
        results = await asyncio.gather(*(batcher.lookup(host) for host in ("evil.example", "flaky.example", "x.test")))
    finally:
        await batcher.close()
    assert results == [MALICIOUS, None, None]
    assert sorted(graph_rig.graph.batches) == [["evil.example"], ["flaky.example"], ["flaky.example"], ["x.test"]]
    assert batcher.counts().retries == 1


async def test_a_throttled_item_waits_out_its_retry_after_and_holds_every_lookup(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("slow.example", Answer(429, retry_after="5"))
    graph_rig.graph.reputations["slow.example"] = MALICIOUS
    batcher = graph_rig.batcher()
    try:
        first = asyncio.create_task(batcher.lookup("slow.example"))
        assert await first == MALICIOUS
        # A lookup after the 429 still waits for the window to end.
        await batcher.lookup("later.example")
    finally:
        await batcher.close()
    throttled_at, *later = graph_rig.graph.sent_at
    assert all(moment >= throttled_at + 5 for moment in later)
    counts = batcher.counts()
    assert (counts.throttled, counts.retries) == (1, 1)


async def test_server_errors_are_retried_with_backoff(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("flaky.example", Answer(500), Answer(503))
    graph_rig.graph.reputations["flaky.example"] = MALICIOUS
    batcher = graph_rig.batcher()
    try:
        assert await batcher.lookup("flaky.example") == MALICIOUS
    finally:
        await batcher.close()
    assert len(graph_rig.graph.batches) == 3
    assert graph_rig.graph.sent_at[1] > graph_rig.graph.sent_at[0]
    assert batcher.counts().retries == 2


async def test_a_lookup_that_keeps_failing_gives_up_after_its_attempts(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("down.example", *(Answer(500) for _ in range(10)))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(LookupFailed, match="500"):
            await batcher.lookup("down.example")
    finally:
        await batcher.close()
    assert len(graph_rig.graph.batches) == FAST_RETRIES.max_attempts


async def test_one_budget_per_lookup_whatever_fails_the_requests_that_carry_it(graph_rig: GraphRig) -> None:
    """Whole requests failing (429, 503, malformed) and the lookup's own item failing spend the same attempts:
    one lookup costs at most `max_attempts` requests, never attempts times attempts."""
    graph_rig.graph.batch_script.extend([Answer(503), Answer(429, retry_after="1")])
    graph_rig.graph.malformed_batches = 1
    graph_rig.graph.script("down.example", *(Answer(500) for _ in range(10)))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(LookupFailed, match="after 4 attempts"):
            await batcher.lookup("down.example")
    finally:
        await batcher.close()
    assert len(graph_rig.graph.batches) == FAST_RETRIES.max_attempts == 4


async def test_a_retry_after_longer_than_the_policy_allows_gives_the_work_back(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("patient.example", Answer(429, retry_after="3600"))
    engine = graph_rig.engine()
    batcher = graph_rig.batcher(engine=engine)
    try:
        with pytest.raises(LookupFailed):
            await batcher.lookup("patient.example")
    finally:
        await batcher.close()
    assert engine.pacer.paused_for > 3000


async def test_a_malformed_batch_answer_is_retried(graph_rig: GraphRig) -> None:
    graph_rig.graph.malformed_batches = 1
    batcher = graph_rig.batcher()
    try:
        assert await batcher.lookup("a.example") is None
    finally:
        await batcher.close()
    assert len(graph_rig.graph.batches) == 2


async def test_a_refused_token_makes_the_dependency_unavailable(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("a.example", Answer(403))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(DependencyUnavailable, match=r"ThreatIntelligence\.Read\.All") as refused:
            await batcher.lookup("a.example")
        # Until Graph accepts us again, lookups fail at once: nothing is sent.
        with pytest.raises(DependencyUnavailable):
            await batcher.lookup("b.example")
        assert len(graph_rig.graph.batches) == 1
        assert '"scripted answer for a.example"' in str(refused.value)  # Graph's own message
        assert await batcher.probe() is True
        assert await batcher.lookup("b.example") is None
    finally:
        await batcher.close()


async def test_a_500_for_every_host_is_a_refusal_not_a_retry(graph_rig: GraphRig) -> None:
    hosts = [f"h{n}.example" for n in range(30)]
    for host in [*hosts, "microsoft.com"]:
        graph_rig.graph.script(host, *(Answer(500) for _ in range(5)))
    batcher = graph_rig.batcher(refusal_after_server_errors=20)
    try:
        results = await asyncio.gather(*(batcher.lookup(host) for host in hosts), return_exceptions=True)
        assert all(isinstance(result, DependencyUnavailable) for result in results)
        assert "HTTP 500 for 20 different hosts in a row" in str(results[0])
        assert "Microsoft Defender XDR or Microsoft Sentinel" in str(results[0])
        # The first request (20 hosts) proved it; the 10 left waiting were never sent.
        assert len(graph_rig.graph.batches) == 1
        assert await batcher.probe() is False
    finally:
        await batcher.close()


async def test_scattered_500s_are_retried_not_taken_for_a_refusal(graph_rig: GraphRig) -> None:
    hosts = [f"h{n}.example" for n in range(40)]
    for host in hosts[::2]:
        graph_rig.graph.script(host, Answer(500))
    batcher = graph_rig.batcher(refusal_after_server_errors=5)
    try:
        results = await asyncio.gather(*(batcher.lookup(host) for host in hosts))
    finally:
        await batcher.close()
    assert results == [None] * 40
    assert batcher.counts().retries == 20


async def test_a_host_graph_rejects_is_a_permanent_failure(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("bad host", Answer(400))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(PermanentFailure) as failure:
            await batcher.lookup("bad host")
    finally:
        await batcher.close()
    assert failure.value.reason == GRAPH_REJECTED_HOST
    assert "HTTP 400" in failure.value.description


async def test_the_probe_tells_whether_graph_accepts_us(graph_rig: GraphRig) -> None:
    batcher = graph_rig.batcher()
    graph_rig.graph.batch_script.append(Answer(403))
    assert await batcher.probe() is False
    assert await batcher.probe() is True
    await batcher.close()


async def test_several_requests_are_in_flight_when_latency_holds_lookups_back(graph_rig: GraphRig) -> None:
    """Graph answers nothing until the gate opens (latency, not a ceiling): the pacer starts with two requests in
    flight and, as requests that waited for a free place are answered cleanly, lets more out at once."""
    graph = graph_rig.graph
    engine = graph_rig.engine(PaceLimits(initial_rate=1_000_000, initial_parallel=2, max_parallel=16))
    batcher = graph_rig.batcher(engine=engine)
    in_flight: list[int] = []
    try:
        for wave in range(4):
            graph.gate.clear()
            lookups = [asyncio.create_task(batcher.lookup(f"w{wave}-{n}.example")) for n in range(200)]
            sent = len(graph.batches)
            limit = engine.pacer.state().parallel_limit
            await until(lambda: len(graph.batches) - sent == limit)  # noqa: B023
            await asyncio.sleep(0.05)
            in_flight.append(len(graph.batches) - sent)  # nothing more leaves while those hang
            graph.gate.set()
            await asyncio.gather(*lookups)
    finally:
        await batcher.close()
    assert in_flight[0] == 2
    assert all(later > earlier for earlier, later in itertools.pairwise(in_flight)), in_flight


async def test_an_unknown_ceiling_is_found_and_sustained_without_entering_a_retry_after_window(
    graph_rig: GraphRig,
) -> None:
    """Graph takes 200 lookups/s (a token bucket, 429 + Retry-After beyond it); tibridge is not told. With the
    scorer's default pacing, the ceiling is reached, its 429s are honoured (no request inside a window), and
    from then on lookups are answered at >= 90 % of it. Time is the manual clock: waits are the pacer's own."""
    ceiling = 200
    graph = graph_rig.graph
    graph.ceiling(ceiling)
    engine = graph_rig.engine(pace_limits(GraphSettings()))
    batcher = graph_rig.batcher(engine=engine, linger_seconds=0)
    try:
        await asyncio.gather(*(batcher.lookup(f"h{n}.example") for n in range(12_000)))
    finally:
        await batcher.close()
    assert graph.inside_retry_after == 0
    pace = engine.pacer.state()
    assert pace.rate_cuts >= 2  # it went past the ceiling, and came back to it
    end = graph_rig.clock.monotonic()
    settled = sum(count for moment, count in graph.answered if moment >= 10)
    assert settled / (end - 10) >= 0.9 * ceiling
    assert batcher.counts().requests <= 12_000 / 20 + batcher.counts().retries


async def test_closing_fails_waiting_lookups_so_their_messages_go_back(graph_rig: GraphRig) -> None:
    batcher = graph_rig.batcher(linger_seconds=60)
    waiting = asyncio.create_task(batcher.lookup("a.example"))
    await asyncio.sleep(0.01)
    await batcher.close()
    with pytest.raises(LookupFailed, match="stopping"):
        await waiting
    assert graph_rig.graph.batches == []


async def test_closing_fails_lookups_whose_batch_is_in_flight(graph_rig: GraphRig) -> None:
    graph_rig.graph.gate.clear()
    batcher = graph_rig.batcher()
    in_flight = asyncio.create_task(batcher.lookup("a.example"))
    await until(lambda: graph_rig.graph.batches != [])
    await batcher.close()
    with pytest.raises(LookupFailed, match="stopping"):
        await in_flight
