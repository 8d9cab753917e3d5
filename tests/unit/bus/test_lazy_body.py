"""A message's body is made the first time something reads the bytes: the in-memory bus hands the producer's
envelope on without encoding it, and whoever does read the bytes (a dead-letter tool) gets the same JSON."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.clock import ManualClock
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION


def counting_encoder(body: bytes) -> tuple[Callable[[], bytes], list[int]]:
    calls: list[int] = []

    def encode() -> bytes:
        calls.append(1)
        return body

    return encode, calls


def test_the_body_is_made_once_when_first_read() -> None:
    encode, calls = counting_encoder(b'{"a": 1}')
    message = OutgoingMessage(body=encode, message_id="m")
    assert calls == []
    assert message.body == b'{"a": 1}'
    assert message.body == b'{"a": 1}'
    assert calls == [1]


async def test_the_memory_bus_hands_the_object_on_and_encodes_only_for_a_reader_of_the_bytes() -> None:
    bus = MemoryBus(clock=ManualClock())
    encode, calls = counting_encoder(b'{"kept": true}')
    envelope = object()
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=encode, message_id="m", decoded=envelope)])
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        (received,) = await receiver.receive(max_messages=1, max_wait=0)
        assert received.decoded is envelope
        assert calls == []
        await receiver.dead_letter(received, "Poison", "a reason")
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) as dead:
        (kept,) = await dead.receive(max_messages=1, max_wait=0)
    assert kept.body == b'{"kept": true}'
    assert calls == [1]
