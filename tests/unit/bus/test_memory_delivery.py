"""The in-memory bus follows messages to the end of the pipeline, because what it holds dies with its process:
a delivery is finished once no copy of its ids is left on any subscription, and a copy the bus itself
dead-lettered (delivery count, TTL) is counted lost."""

from __future__ import annotations

from datetime import timedelta

from tests.fixtures.clock import ManualClock
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
)

SCORER = TOPOLOGY.topic(INDICATORS_TOPIC).subscription(SCORER_SUBSCRIPTION)


def indicator(message_id: str) -> OutgoingMessage:
    return OutgoingMessage(body=b"{}", message_id=message_id, application_properties={"type": "indicator.collected"})


def scored(message_id: str, verdict: str) -> OutgoingMessage:
    return OutgoingMessage(
        body=b"{}", message_id=message_id, application_properties={"type": "indicator.scored", "verdict": verdict}
    )


async def test_a_delivery_finishes_when_every_copy_downstream_is_completed() -> None:
    bus = MemoryBus(clock=ManualClock())
    await bus.publish(INDICATORS_TOPIC, [indicator("a"), indicator("b")])
    delivery = bus.delivery(["a", "b"])
    assert (delivery.finished, delivery.remaining) == (False, 2)
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        first, second = await scorer.receive(max_messages=2, max_wait=0)
        # The scorer publishes what it derives (same id, next topic) before it completes its input.
        await bus.publish(SCORED_TOPIC, [scored("a", "publish"), scored("b", "drop")])
        await scorer.complete(first)
        await scorer.complete(second)
    # "b" was dropped (the publisher's rule does not take it): done; "a" waits on the publisher.
    assert (delivery.finished, delivery.remaining) == (False, 1)
    async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) as publisher:
        [held] = await publisher.receive(max_messages=1, max_wait=0)
        await publisher.abandon(held)  # given back: still on the bus
        assert not delivery.finished
        [held] = await publisher.receive(max_messages=1, max_wait=0)
        await publisher.complete(held)
    assert (delivery.finished, delivery.remaining, delivery.lost) == (True, 0, 0)
    await delivery.wait()


async def test_a_consumers_own_dead_letter_is_a_decided_fate_not_a_loss() -> None:
    bus = MemoryBus(clock=ManualClock())
    await bus.publish(INDICATORS_TOPIC, [indicator("poison")])
    delivery = bus.delivery(["poison"])
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        [message] = await scorer.receive(max_messages=1, max_wait=0)
        await scorer.dead_letter(message, "InvalidBody", "not an envelope")
    assert (delivery.finished, delivery.lost) == (True, 0)


async def test_what_the_bus_dead_letters_itself_is_lost() -> None:
    bus = MemoryBus(clock=ManualClock())
    await bus.publish(INDICATORS_TOPIC, [indicator("flaky")])
    delivery = bus.delivery(["flaky"])
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        for _ in range(SCORER.max_delivery_count):
            [message] = await scorer.receive(max_messages=1, max_wait=0)
            await scorer.abandon(message)
    assert (delivery.finished, delivery.lost) == (True, 1)
    assert bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 1
    # Asked again later, the loss is still known, until the id is published again.
    assert bus.delivery(["flaky"]).lost == 1


async def test_an_expired_message_is_lost() -> None:
    clock = ManualClock()
    bus = MemoryBus(clock=clock)
    await bus.publish(INDICATORS_TOPIC, [indicator("stale")])
    delivery = bus.delivery(["stale"])
    clock.advance(SCORER.message_ttl + timedelta(seconds=1))
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        assert await scorer.receive(max_messages=1, max_wait=0) == []
    assert (delivery.finished, delivery.lost) == (True, 1)


async def test_a_lapsed_lock_is_no_settlement() -> None:
    clock = ManualClock()
    bus = MemoryBus(clock=clock)
    await bus.publish(INDICATORS_TOPIC, [indicator("slow")])
    delivery = bus.delivery(["slow"])
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        await scorer.receive(max_messages=1, max_wait=0)
        clock.advance(SCORER.lock_duration + timedelta(seconds=1))
        [again] = await scorer.receive(max_messages=1, max_wait=0)
        assert not delivery.finished
        await scorer.complete(again)
    assert delivery.finished


async def test_ids_already_settled_or_never_published_are_delivered_at_once() -> None:
    bus = MemoryBus(clock=ManualClock())
    await bus.publish(INDICATORS_TOPIC, [indicator("done")])
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as scorer:
        [message] = await scorer.receive(max_messages=1, max_wait=0)
        await scorer.complete(message)
    await bus.publish(INDICATORS_TOPIC, [indicator("done")])  # a duplicate, dropped by duplicate detection
    delivery = bus.delivery(["done", "unknown"])
    assert (delivery.finished, delivery.remaining, delivery.lost) == (True, 0, 0)
    await delivery.wait()
