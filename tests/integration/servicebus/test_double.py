"""The unmodified azure-servicebus SDK, async and sync, against the wire-level double: what the contract suite
does not reach through the bus port (peek, the management fallback, released messages, faults, the process)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient as SyncServiceBusClient
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from tests.fixtures.servicebus import EMULATOR_CONFIG
from tests.sbdouble import ServiceBusDouble
from tibridge.common.bus.port import BusUnavailable, LockLost, OutgoingMessage, ReceivedMessage
from tibridge.common.bus.servicebus import ServiceBusBus, ServiceBusSubscriptionReceiver
from tibridge.common.topology import INDICATORS_TOPIC, SCORED_TOPIC, SCORER_SUBSCRIPTION

REPO_ROOT = Path(__file__).resolve().parents[3]
PROCESS_TIMEOUT = 30.0


def messages(*ids: str, **properties: str) -> list[ServiceBusMessage]:
    application_properties: dict[str | bytes, int | float | bytes | bool | str | uuid.UUID] = {}
    application_properties.update(properties)
    return [ServiceBusMessage(f'"{i}"', message_id=i, application_properties=application_properties) for i in ids]


def test_the_sync_sdk_sends_batches_receives_and_settles(sb_double: ServiceBusDouble) -> None:
    with SyncServiceBusClient.from_connection_string(sb_double.connection_string) as client:
        with client.get_topic_sender(INDICATORS_TOPIC) as sender:
            batch = sender.create_message_batch()
            assert batch.max_size_in_bytes == 256 * 1024  # the standard tier's limit, from the link attach
            for each in messages("a", "b", "c"):
                batch.add_message(each)
            sender.send_messages(batch)
        with client.get_subscription_receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            received = receiver.receive_messages(max_message_count=3, max_wait_time=5)
            assert sorted(str(m.message_id) for m in received) == ["a", "b", "c"]
            first, second, third = sorted(received, key=lambda m: str(m.message_id))
            receiver.complete_message(first)
            receiver.abandon_message(second)
            receiver.dead_letter_message(third, reason="Poison", error_description="cannot parse")
    [abandoned] = sb_double.messages(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    assert (abandoned.message_id, abandoned.delivery_count) == ("b", 1)
    [dead] = sb_double.dead_letters(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    assert (dead.message_id, dead.dead_letter_reason, dead.dead_letter_description) == ("c", "Poison", "cannot parse")


async def test_peek_shows_messages_without_locking_them(sb_double: ServiceBusDouble) -> None:
    async with ServiceBusClient.from_connection_string(sb_double.connection_string) as client:
        async with client.get_topic_sender(SCORED_TOPIC) as sender:
            await sender.send_messages(messages("p1", "p2", verdict="publish"))
        async with client.get_subscription_receiver(SCORED_TOPIC, "publisher") as receiver:
            peeked = await receiver.peek_messages(max_message_count=10, sequence_number=1)
            assert [str(m.message_id) for m in peeked] == ["p1", "p2"]
            received = await receiver.receive_messages(max_message_count=2, max_wait_time=5)
            assert [m.delivery_count for m in received] == [0, 0]
            for each in received:
                await receiver.complete_message(each)
            assert await receiver.peek_messages(max_message_count=10, sequence_number=1) == []


async def test_settlement_falls_back_to_the_management_link_after_a_dropped_connection(
    sb_double: ServiceBusDouble,
) -> None:
    async with ServiceBusClient.from_connection_string(sb_double.connection_string) as client:
        async with client.get_topic_sender(INDICATORS_TOPIC) as sender:
            await sender.send_messages(messages("kept", "back"))
        async with client.get_subscription_receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            received = sorted(
                await receiver.receive_messages(max_message_count=2, max_wait_time=5), key=lambda m: str(m.message_id)
            )
            assert sb_double.drop_connections() >= 1
            # The delivery's link is gone: the SDK settles by lock token with $management update-disposition.
            await receiver.abandon_message(received[0])
            await receiver.complete_message(received[1])
    [left] = sb_double.messages(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    assert (left.message_id, left.delivery_count) == ("back", 1)


async def test_closing_a_receiver_releases_prefetched_messages_without_counting_them(
    sb_double: ServiceBusDouble,
) -> None:
    async with ServiceBusClient.from_connection_string(sb_double.connection_string) as client:
        async with client.get_topic_sender(INDICATORS_TOPIC) as sender:
            await sender.send_messages(messages(*(f"m{i}" for i in range(5))))
        async with client.get_subscription_receiver(
            INDICATORS_TOPIC, SCORER_SUBSCRIPTION, prefetch_count=5
        ) as receiver:
            [first] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            await receiver.complete_message(first)
        # The rest were delivered into the prefetch buffer; closing drains the link and releases them.
        left = sb_double.messages(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
        assert len(left) == 4
        async with client.get_subscription_receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            again = await receiver.receive_messages(max_message_count=4, max_wait_time=5)
            assert [m.delivery_count for m in again] == [0, 0, 0, 0]


async def test_the_dead_letter_subqueue_is_addressable(sb_double: ServiceBusDouble) -> None:
    async with ServiceBusClient.from_connection_string(sb_double.connection_string) as client:
        async with client.get_topic_sender(INDICATORS_TOPIC) as sender:
            await sender.send_messages(messages("dead"))
        async with client.get_subscription_receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            [received] = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            await receiver.dead_letter_message(received, reason="R", error_description="D")
        async with client.get_subscription_receiver(
            INDICATORS_TOPIC, SCORER_SUBSCRIPTION, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dead_letters:
            [dead] = await dead_letters.receive_messages(max_message_count=1, max_wait_time=5)
            assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("R", "D")
            await dead_letters.complete_message(dead)
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0


async def test_readiness_fails_while_connections_are_refused_and_recovers(sb_double: ServiceBusDouble) -> None:
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string, operation_timeout=2)
    try:
        await bus.check()
        sb_double.refuse_connections()
        sb_double.drop_connections()
        with pytest.raises(BusUnavailable, match="Service Bus is not ready"):
            await bus.check()
        sb_double.refuse_connections(False)
        await bus.check()
    finally:
        await bus.close()


async def test_batches_the_sdk_fills_to_the_limit_are_accepted(sb_double: ServiceBusDouble) -> None:
    # Small messages fill a batch to within bytes of the limit, where the SDK's size estimate runs short.
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string, operation_timeout=10)
    try:
        await bus.publish(
            INDICATORS_TOPIC, [OutgoingMessage(body=b"x" * 500, message_id=str(uuid.uuid4())) for _ in range(1000)]
        )
    finally:
        await bus.close()
    assert sb_double.transfers(INDICATORS_TOPIC) == 3
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 1000


async def test_a_message_larger_than_a_batch_is_refused_with_its_id(sb_double: ServiceBusDouble) -> None:
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string, operation_timeout=10)
    try:
        with pytest.raises(Exception, match="message huge is larger than the largest batch"):
            await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"x" * (300 * 1024), message_id="huge")])
    finally:
        await bus.close()
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 0


def test_stopping_with_a_client_connected_leaves_no_thread() -> None:
    double = ServiceBusDouble(EMULATOR_CONFIG).start()
    client = SyncServiceBusClient.from_connection_string(double.connection_string)
    with client, client.get_topic_sender(INDICATORS_TOPIC) as sender:
        sender.send_messages(messages("x"))
        double.stop()
    assert not [thread for thread in threading.enumerate() if thread.name == "servicebus-double"]
    assert double.errors == []


async def test_the_standalone_process_serves_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sbdouble",
        "--port",
        "0",
        "--config",
        str(EMULATOR_CONFIG),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
        connection_string = line.decode().strip()
        assert connection_string.startswith("Endpoint=sb://127.0.0.1:")
        bus = ServiceBusBus.from_connection_string(connection_string, operation_timeout=10)
        try:
            await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{}", message_id="from-another-process")])
            async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
                [received] = await receiver.receive(max_messages=1, max_wait=5)
                await receiver.complete(received)
            assert received.message_id == "from-another-process"
        finally:
            await bus.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def one_received(
    double: ServiceBusDouble, message_id: str
) -> AsyncIterator[tuple[ServiceBusSubscriptionReceiver, ReceivedMessage]]:
    """A message received through the adapter, and the receiver it came through."""
    bus = ServiceBusBus.from_connection_string(double.connection_string, operation_timeout=10)
    try:
        await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{}", message_id=message_id)])
        async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            [received] = await receiver.receive(max_messages=1, max_wait=5)
            yield receiver, received
    finally:
        await bus.close()


async def test_settling_through_a_receiver_that_shut_down_is_a_lost_lock_not_a_crash(
    sb_double: ServiceBusDouble,
) -> None:
    # The SDK raises ValueError for a message whose receiver has shut down (as after a failed link reopen); the
    # adapter must answer with the port's LockLost, which every consumer survives, and the message comes back.
    async with one_received(sb_double, "settled-too-late") as (receiver, received):
        await receiver.close()
        with pytest.raises(LockLost, match="settled-too-late"):
            await receiver.complete(received)


async def test_a_broken_sdk_client_is_the_ports_bus_unavailable_not_a_crash(
    sb_double: ServiceBusDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen under load: once its AMQP layer broke, the SDK's handler answered settlements with a plain
    # AttributeError ("'NoneType' object has no attribute 'client_ready_async'"), which stopped the publisher.
    async def broken(*_: object, **__: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'client_ready_async'")

    async with one_received(sb_double, "through-a-broken-client") as (receiver, received):
        monkeypatch.setattr(receiver._receiver, "complete_message", broken)
        with pytest.raises(BusUnavailable, match="the Service Bus client failed"):
            await receiver.complete(received)
