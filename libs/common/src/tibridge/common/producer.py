"""Sending messages: every producer hands payloads to `Producer.send`, which puts each in its envelope.

The envelope gets the deterministic message id, the time and the active span's trace context, so the
consumer's span joins the producer's trace; the Service Bus message gets the application properties that
subscription rules filter on. Nothing else builds an `OutgoingMessage` from a payload.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from tibridge.common.aio import waiting_on_dependency
from tibridge.common.bus.port import Bus, OutgoingMessage
from tibridge.common.clock import Clock
from tibridge.common.contracts import (
    Envelope,
    IndicatorCollected,
    IndicatorScored,
    application_properties,
    encode,
    envelope_for,
)
from tibridge.common.telemetry import current_trace_context


class Producer:
    def __init__(self, bus: Bus, clock: Clock) -> None:
        self._bus = bus
        self._clock = clock

    async def send(self, topic: str, payloads: Sequence[IndicatorCollected | IndicatorScored]) -> list[str]:
        """Publishes every payload to `topic` in as few transfers as the bus allows; returns once all are accepted,
        with the message ids they got."""
        if not payloads:
            return []
        traceparent, tracestate = current_trace_context()
        produced_at = self._clock.now()
        messages = [
            message_for(envelope_for(payload, produced_at=produced_at, traceparent=traceparent, tracestate=tracestate))
            for payload in payloads
        ]
        # The bus may be slow to accept (throttling, reconnects): time a handler's budget does not count.
        with waiting_on_dependency():
            await self._bus.publish(topic, messages)
        return [message.message_id for message in messages]


def message_for(envelope: Envelope) -> OutgoingMessage:
    """The bus message that carries `envelope`: its id, its JSON body (made when a bus first reads it) and the
    properties rules filter on."""
    return OutgoingMessage(
        body=functools.partial(encode, envelope),
        message_id=envelope.message_id,
        application_properties=application_properties(envelope),
        decoded=envelope,
    )
