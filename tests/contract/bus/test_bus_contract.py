"""The bus contract: every case runs against each adapter (memory, servicebus over the double, the emulator)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest

from tests.fixtures.servicebus import BusUnderTest
from tibridge.common.bus.port import EntityNotFound, LockLost, OutgoingMessage, PropertyValue, ReceivedMessage, Receiver
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
)

MAX_DELIVERY_COUNT = TOPOLOGY.topic(INDICATORS_TOPIC).subscription(SCORER_SUBSCRIPTION).max_delivery_count
LONGEST_LOCK_TO_WAIT_OUT = timedelta(seconds=5)
QUIET_WAIT = 0.3  # how long "nothing more arrives" is watched for
ARRIVAL_TIMEOUT = 10.0
SERVICEBUS_BATCH_LIMIT = 256 * 1024


def message(
    *, body: bytes = b'{"n": 1}', message_id: str | None = None, **properties: PropertyValue
) -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=message_id or str(uuid.uuid4()), application_properties=properties)


async def receive_count(receiver: Receiver, count: int, within: float = ARRIVAL_TIMEOUT) -> list[ReceivedMessage]:
    """Receives until `count` messages arrived (or `within` seconds passed), then returns what came."""
    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + within
    while len(received) < count and (remaining := deadline - time.monotonic()) > 0:
        received += await receiver.receive(max_messages=min(count - len(received), 500), max_wait=remaining)
    return received


async def receive_one(receiver: Receiver) -> ReceivedMessage:
    received = await receive_count(receiver, 1)
    assert received, f"no message arrived within {ARRIVAL_TIMEOUT} s"
    return received[0]


def wait_out_lock(bus: BusUnderTest, factor: float) -> float:
    if bus.lock_duration > LONGEST_LOCK_TO_WAIT_OUT:
        pytest.skip(f"the {bus.kind} bus's shortest lock ({bus.lock_duration}) is too long to wait out")
    return bus.lock_duration.total_seconds() * factor


async def test_round_trip_keeps_body_id_and_properties(contract_bus: BusUnderTest) -> None:
    properties: dict[str, PropertyValue] = {
        "type": "IndicatorScored",
        "schema_version": "1.0",
        "verdict": "publish",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "attempt": 3,
        "active": True,
    }
    sent = OutgoingMessage(
        body=b'{"value": "198.51.100.7"}', message_id=str(uuid.uuid4()), application_properties=properties
    )
    await contract_bus.bus.publish(SCORED_TOPIC, [sent])

    async with contract_bus.bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) as receiver:
        received = await receive_one(receiver)
        assert received.body == sent.body
        assert received.message_id == sent.message_id
        assert received.application_properties == properties
        assert received.delivery_count == 0
        assert received.sequence_number > 0
        assert received.locked_until is not None
        assert received.locked_until > received.enqueued_time
        assert received.dead_letter_reason is None
        await receiver.complete(received)


async def test_complete_removes_the_message(contract_bus: BusUnderTest) -> None:
    await contract_bus.bus.publish(INDICATORS_TOPIC, [message()])
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        await receiver.complete(await receive_one(receiver))
        # Not even once its lock would have lapsed.
        quiet = QUIET_WAIT + wait_out_lock(contract_bus, 1.2)
        assert await receiver.receive(max_messages=1, max_wait=quiet) == []


@pytest.mark.parametrize("contract_lock_duration", [timedelta(minutes=1)])  # peeks open receivers: slow
async def test_pending_counts_waiting_and_locked_messages_until_completed(contract_bus: BusUnderTest) -> None:
    bus = contract_bus.bus
    assert not await bus.has_pending(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    await bus.publish(INDICATORS_TOPIC, [message()])
    assert await bus.has_pending(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        received = await receive_one(receiver)
        assert await bus.has_pending(INDICATORS_TOPIC, SCORER_SUBSCRIPTION), "a locked message is still pending"
        await receiver.complete(received)
    assert not await bus.has_pending(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)


async def test_abandon_redelivers_with_delivery_count_plus_one(contract_bus: BusUnderTest) -> None:
    sent = message()
    await contract_bus.bus.publish(INDICATORS_TOPIC, [sent])
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        first = await receive_one(receiver)
        await receiver.abandon(first)
        again = await receive_one(receiver)
        assert (again.message_id, again.delivery_count) == (sent.message_id, first.delivery_count + 1)
        await receiver.complete(again)


async def test_lock_expiry_redelivers_with_delivery_count_plus_one(contract_bus: BusUnderTest) -> None:
    wait_out_lock(contract_bus, 1.0)
    sent = message()
    await contract_bus.bus.publish(INDICATORS_TOPIC, [sent])
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        first = await receive_one(receiver)
        again = await receive_one(receiver)  # arrives once the first lock lapses
        assert (again.message_id, again.delivery_count) == (sent.message_id, first.delivery_count + 1)
        await receiver.complete(again)


async def test_dead_letter_keeps_reason_and_description(contract_bus: BusUnderTest) -> None:
    sent = message(verdict="publish")
    await contract_bus.bus.publish(SCORED_TOPIC, [sent])
    async with contract_bus.bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) as receiver:
        await receiver.dead_letter(await receive_one(receiver), "MalformedBody", "the body is not JSON")
        assert await receiver.receive(max_messages=1, max_wait=QUIET_WAIT) == []

    async with contract_bus.bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as dead_letters:
        dead = await receive_one(dead_letters)
        assert (dead.message_id, dead.body) == (sent.message_id, sent.body)
        assert (dead.dead_letter_reason, dead.dead_letter_description) == ("MalformedBody", "the body is not JSON")
        assert dead.application_properties == {"verdict": "publish"}
        await dead_letters.complete(dead)


async def test_max_delivery_count_dead_letters_with_the_reason(contract_bus: BusUnderTest) -> None:
    sent = message()
    await contract_bus.bus.publish(INDICATORS_TOPIC, [sent])
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        counts = []
        for _ in range(MAX_DELIVERY_COUNT):
            delivered = await receive_one(receiver)
            counts.append(delivered.delivery_count)
            await receiver.abandon(delivered)
        assert counts == list(range(MAX_DELIVERY_COUNT))
        assert await receiver.receive(max_messages=1, max_wait=QUIET_WAIT) == []

    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) as dead_letters:
        dead = await receive_one(dead_letters)
        assert dead.message_id == sent.message_id
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dead.delivery_count == MAX_DELIVERY_COUNT
        await dead_letters.complete(dead)


async def test_duplicate_message_id_within_the_window_is_dropped(contract_bus: BusUnderTest) -> None:
    message_id = str(uuid.uuid4())
    await contract_bus.bus.publish(INDICATORS_TOPIC, [message(body=b'"first"', message_id=message_id)])
    await contract_bus.bus.publish(INDICATORS_TOPIC, [message(body=b'"second"', message_id=message_id)])
    await contract_bus.bus.publish(
        INDICATORS_TOPIC, [message(body=b'"third"', message_id=message_id), message(body=b'"other"')]
    )
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        received = await receive_count(receiver, 2)
        received += await receiver.receive(max_messages=10, max_wait=QUIET_WAIT)
        assert sorted(m.body for m in received) == [b'"first"', b'"other"']
        for each in received:
            await receiver.complete(each)


async def test_publisher_rule_keeps_publish_and_expire_only(contract_bus: BusUnderTest) -> None:
    verdicts = ["publish", "drop", "expire", "drop"]
    await contract_bus.bus.publish(SCORED_TOPIC, [message(verdict=verdict) for verdict in verdicts])
    await contract_bus.bus.publish(SCORED_TOPIC, [message()])  # no verdict at all
    async with contract_bus.bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) as receiver:
        received = await receive_count(receiver, 2)
        received += await receiver.receive(max_messages=10, max_wait=QUIET_WAIT)
        assert sorted(str(m.application_properties["verdict"]) for m in received) == ["expire", "publish"]
        for each in received:
            await receiver.complete(each)


# Locks long enough that nothing is redelivered while a thousand messages are received.
@pytest.mark.parametrize("contract_lock_duration", [timedelta(minutes=1)])
async def test_a_publish_larger_than_one_servicebus_batch_is_fully_delivered(contract_bus: BusUnderTest) -> None:
    body = b"x" * 2048
    sent = [message(body=body, index=index) for index in range(1000)]
    assert sum(len(m.body) for m in sent) > 7 * SERVICEBUS_BATCH_LIMIT
    await contract_bus.bus.publish(INDICATORS_TOPIC, sent)
    if contract_bus.double is not None:
        assert contract_bus.double.transfers(INDICATORS_TOPIC) >= 8

    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, prefetch=500) as receiver:
        received = await receive_count(receiver, len(sent), within=60)
        assert sorted(m.message_id for m in received) == sorted(m.message_id for m in sent)
        assert {m.body for m in received} == {body}


async def test_renew_lock_extends_locked_until(contract_bus: BusUnderTest) -> None:
    await contract_bus.bus.publish(INDICATORS_TOPIC, [message()])
    short = contract_bus.lock_duration <= LONGEST_LOCK_TO_WAIT_OUT
    pause = contract_bus.lock_duration.total_seconds() * 0.6 if short else 0.0
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        received = await receive_one(receiver)
        first_lock = received.locked_until
        assert first_lock is not None
        await asyncio.sleep(pause)
        renewed = await receiver.renew_lock(received)
        assert renewed > first_lock
        assert received.locked_until == renewed
        await asyncio.sleep(pause)  # past the first lock, within the renewed one
        await receiver.complete(received)
        assert await receiver.receive(max_messages=1, max_wait=QUIET_WAIT + pause) == []


async def test_settling_after_the_lock_lapsed_raises_lock_lost(contract_bus: BusUnderTest) -> None:
    lapse = wait_out_lock(contract_bus, 1.5)
    await contract_bus.bus.publish(INDICATORS_TOPIC, [message()])
    async with contract_bus.bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        received = await receive_one(receiver)
        await asyncio.sleep(lapse)
        with pytest.raises(LockLost):
            await receiver.complete(received)
        with pytest.raises(LockLost):
            await receiver.renew_lock(received)
        again = await receive_one(receiver)
        assert (again.message_id, again.delivery_count) == (received.message_id, 1)
        await receiver.complete(again)


async def test_unknown_entities_raise_entity_not_found(contract_bus: BusUnderTest) -> None:
    with pytest.raises(EntityNotFound):
        await contract_bus.bus.publish("no-such-topic", [message()])
    with pytest.raises(EntityNotFound):
        async with contract_bus.bus.receiver(INDICATORS_TOPIC, "no-such-subscription") as receiver:
            await receiver.receive(max_messages=1, max_wait=QUIET_WAIT)


async def test_check_passes_when_the_bus_answers(contract_bus: BusUnderTest) -> None:
    await contract_bus.bus.check()
