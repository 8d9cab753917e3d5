"""SIGTERM to a consumer process on Service Bus (the servicebus adapter over the wire-level double) mid-work:
it exits 0, and every message is completed or back on the subscription."""

from __future__ import annotations

from tests.fixtures.messages import collected_envelope
from tests.reliability.common.consumer_process import MESSAGES, assert_stopped_without_loss, run_and_terminate
from tests.sbdouble import ServiceBusDouble
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.producer import message_for
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION


async def test_sigterm_mid_work_on_service_bus_loses_nothing(sb_double: ServiceBusDouble) -> None:
    producer = ServiceBusBus.from_connection_string(sb_double.connection_string)
    try:
        envelopes = [collected_envelope(number) for number in range(1, MESSAGES + 1)]
        await producer.publish(INDICATORS_TOPIC, [message_for(envelope) for envelope in envelopes])
    finally:
        await producer.close()
    run = await run_and_terminate(
        {"TIBRIDGE_BUS": "servicebus", "TIBRIDGE_SERVICEBUS_CONNECTION_STRING": sb_double.connection_string},
        publish_itself=False,
    )
    left = {str(message.message_id) for message in sb_double.messages(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)}
    dead = {str(message.message_id) for message in sb_double.dead_letters(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)}
    assert_stopped_without_loss(run, left=left, dead=dead)
