"""Lookup coalescing into $batch requests, and what happens to items Graph defers or refuses."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.scorer import FAST_RETRIES, MALICIOUS, Answer, GraphRig, until
from tibridge.common.consumer import DependencyUnavailable, PermanentFailure
from tibridge.scorer.graph_batches import GRAPH_REJECTED_HOST, LookupFailed


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
    graph_counts = graph_rig.client.metrics.counts()
    assert (graph_counts.throttled, graph_counts.retries) == (1, 1)


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
    assert graph_rig.client.metrics.counts().retries == 2


async def test_a_lookup_that_keeps_failing_gives_up_after_its_attempts(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("down.example", *(Answer(500) for _ in range(10)))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(LookupFailed, match="500"):
            await batcher.lookup("down.example")
    finally:
        await batcher.close()
    assert len(graph_rig.graph.batches) == FAST_RETRIES.max_attempts


async def test_a_retry_after_longer_than_the_policy_allows_gives_the_work_back(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("patient.example", Answer(429, retry_after="3600"))
    batcher = graph_rig.batcher()
    try:
        with pytest.raises(LookupFailed):
            await batcher.lookup("patient.example")
    finally:
        await batcher.close()
    assert graph_rig.limiter.paused_for > 3000


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
        with pytest.raises(DependencyUnavailable, match=r"ThreatIntelligence\.Read\.All"):
            await batcher.lookup("a.example")
    finally:
        await batcher.close()


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
