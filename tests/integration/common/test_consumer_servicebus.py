"""The consumer loop over Service Bus (the servicebus adapter over the wire-level double): one trace from
producer to consumer, and unreadable bodies dead-lettered with their reason while the consumer goes on."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fixtures.messages import collected, collected_envelope, consumer_options
from tests.fixtures.runtime import eventually
from tests.sbdouble import ServiceBusDouble
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.consumer import Consumer
from tibridge.common.contracts import IndicatorCollected
from tibridge.common.producer import message_for
from tibridge.common.telemetry import current_trace_context
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION


class CompletingHandler:
    """Leaves settlement to the consumer: returning completes the message."""

    payload_type = IndicatorCollected

    def __init__(self) -> None:
        self.handled: list[str] = []

    async def handle(self, payload: IndicatorCollected) -> None:
        self.handled.append(payload.indicator_id)

    async def probe(self) -> bool:
        return True


async def test_the_consumer_span_joins_the_producer_trace_across_service_bus(
    sb_double: ServiceBusDouble, span_exporter: InMemorySpanExporter
) -> None:
    # Producer and consumer each have their own client, as two processes would.
    producer_bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
    consumer_bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
    handler = CompletingHandler()
    consumer: Consumer[IndicatorCollected] = Consumer(
        consumer_bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION, handler, consumer_options(receive_wait_seconds=0.2)
    )
    stop = asyncio.Event()
    try:
        with trace.get_tracer("test.collector").start_as_current_span("collect window") as producer_span:
            traceparent, _ = current_trace_context()
            envelope = collected_envelope(1, traceparent=traceparent)
            await producer_bus.publish(INDICATORS_TOPIC, [message_for(envelope)])
        consuming = asyncio.create_task(consumer.run(stop))
        await eventually(lambda: consumer.counts().completed == 1, what="consuming the message")
        assert handler.handled == [collected(1).indicator_id]
        stop.set()
        await asyncio.wait_for(consuming, 30)
    finally:
        stop.set()
        await producer_bus.close()
        await consumer_bus.close()

    [consumer_span] = [span for span in span_exporter.get_finished_spans() if span.name.endswith(" process")]
    producer_context = producer_span.get_span_context()
    assert consumer_span.context is not None
    assert consumer_span.parent is not None
    assert consumer_span.context.trace_id == producer_context.trace_id
    assert consumer_span.parent.span_id == producer_context.span_id
    assert consumer_span.kind is trace.SpanKind.CONSUMER
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 0


async def test_a_malformed_body_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(
    sb_double: ServiceBusDouble,
) -> None:
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
    handler = CompletingHandler()
    consumer: Consumer[IndicatorCollected] = Consumer(
        bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION, handler, consumer_options(receive_wait_seconds=0.2)
    )
    good = collected_envelope(2)
    stop = asyncio.Event()
    try:
        await bus.publish(
            INDICATORS_TOPIC,
            [OutgoingMessage(body=b"{not json", message_id="malformed"), message_for(good)],
        )
        consuming = asyncio.create_task(consumer.run(stop))
        await eventually(lambda: consumer.counts().completed == 1, what="completing the good message")
        assert handler.handled == [collected(2).indicator_id]
        stop.set()
        await asyncio.wait_for(consuming, 30)
    finally:
        stop.set()
        await bus.close()
    [dead] = sb_double.dead_letters(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)
    assert (dead.message_id, dead.dead_letter_reason) == ("malformed", "InvalidBody")
    assert "not JSON" in (dead.dead_letter_description or "")
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 0
