"""`tibridge dlq list | replay` over Service Bus (the wire-level double): see why, then send round again."""

import contextlib

import pytest

from tests.fixtures.messages import collected_envelope
from tests.sbdouble.server import ServiceBusDouble
from tibridge.cli.dlq import list_dead_letters, replay_dead_letters
from tibridge.common.bus.port import ReceivedMessage
from tibridge.common.producer import message_for
from tibridge.common.runtime import bus_from_settings
from tibridge.common.settings import ServiceSettings, load_settings
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION


@pytest.fixture
def servicebus_env(sb_double: ServiceBusDouble, monkeypatch: pytest.MonkeyPatch) -> ServiceBusDouble:
    monkeypatch.setenv("TIBRIDGE_BUS", "servicebus")
    monkeypatch.setenv("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", sb_double.connection_string)
    return sb_double


async def _dead_letter(double: ServiceBusDouble, reasons: list[str]) -> None:
    async with contextlib.AsyncExitStack() as resources:
        bus = await bus_from_settings(load_settings(ServiceSettings), resources)
        messages = [message_for(collected_envelope(n)) for n in range(len(reasons))]
        await bus.publish(INDICATORS_TOPIC, messages)
        async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
            received: list[ReceivedMessage] = []
            while len(received) < len(reasons):
                received += await receiver.receive(len(reasons), 5)
            by_id = {m.message_id: m for m in received}
            for message, reason in zip(messages, reasons, strict=True):
                await receiver.dead_letter(by_id[message.message_id], reason, f"because {reason}")


async def test_list_shows_reasons_and_leaves_the_messages(
    servicebus_env: ServiceBusDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    await _dead_letter(servicebus_env, ["InvalidBody", "GraphRejectedHost"])
    assert await list_dead_letters(SCORER_SUBSCRIPTION, 10) == 0
    shown = capsys.readouterr().out
    assert "InvalidBody — because InvalidBody" in shown
    assert "GraphRejectedHost" in shown
    assert servicebus_env.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 2


async def test_replay_sends_the_chosen_reason_round_again(
    servicebus_env: ServiceBusDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    await _dead_letter(servicebus_env, ["GraphRejectedHost", "InvalidBody", "GraphRejectedHost"])
    assert await replay_dead_letters(SCORER_SUBSCRIPTION, 3, "GraphRejectedHost") == 0
    assert "replayed 2 message(s)" in capsys.readouterr().out
    assert servicebus_env.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 2
    assert servicebus_env.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 1
