"""The consumer loop on the in-memory bus: bounded in-flight work, dead-lettering, redelivery, pause, locks, stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fixtures.messages import collected_envelope, consumer_options, scored
from tests.fixtures.runtime import eventually
from tibridge.common import consumer as consumer_module
from tibridge.common.aio import waiting_on_dependency
from tibridge.common.bus.memory import MemoryBus, MemoryReceiver
from tibridge.common.bus.port import BusUnavailable, OutgoingMessage, ReceivedMessage
from tibridge.common.consumer import (
    PROCESSING_ERROR,
    PROCESSING_TIMEOUT,
    UNEXPECTED_TYPE,
    Consumer,
    ConsumerOptions,
    DependencyUnavailable,
    InFlight,
    PermanentFailure,
    Settlement,
    TryLater,
)
from tibridge.common.contracts import Envelope, IndicatorCollected, Unreadable, decode, envelope_for
from tibridge.common.logging import REDACTED, register_secret
from tibridge.common.producer import message_for
from tibridge.common.runtime import not_paused
from tibridge.common.telemetry import current_trace_context
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION, SubscriptionSpec, TopicSpec, Topology

MAX_DELIVERIES = 3
FAST = consumer_options(
    max_in_flight=8,
    max_concurrency=8,
    receive_wait_seconds=0.05,
    shutdown_grace_seconds=0.2,
    probe_interval_seconds=0.02,
    lock_check_interval_seconds=0.02,
)

OnMessage = Callable[[InFlight[IndicatorCollected]], Awaitable[None]]
OnPayload = Callable[[IndicatorCollected], Awaitable[None]]


def topology(lock_seconds: float = 60.0) -> Topology:
    subscription = SubscriptionSpec(
        SCORER_SUBSCRIPTION, lock_duration=timedelta(seconds=lock_seconds), max_delivery_count=MAX_DELIVERIES
    )
    return Topology(topics=(TopicSpec(INDICATORS_TOPIC, subscriptions=(subscription,)),))


async def complete(item: InFlight[IndicatorCollected]) -> None:
    await item.complete()


class RecordingHandler:
    """A manual handler: it settles every message itself (`on_message`)."""

    payload_type = IndicatorCollected

    def __init__(self, on_message: OnMessage = complete) -> None:
        self.on_message = on_message
        self.seen: list[tuple[str, int]] = []
        self.recovered = False
        self.flushed = False

    async def hold(self, item: InFlight[IndicatorCollected]) -> None:
        self.seen.append((item.message.message_id, item.message.delivery_count))
        await self.on_message(item)

    async def flush(self) -> None:
        self.flushed = True

    async def probe(self) -> bool:
        return self.recovered


class SettledForMe:
    """A handler that leaves settlement to the consumer: `on_payload` returns or raises."""

    payload_type = IndicatorCollected

    def __init__(self, on_payload: OnPayload) -> None:
        self.on_payload = on_payload
        self.seen: list[str] = []

    async def handle(self, payload: IndicatorCollected) -> None:
        self.seen.append(payload.indicator_id)
        await self.on_payload(payload)

    async def probe(self) -> bool:
        return True


async def publish(bus: MemoryBus, *numbers: int) -> list[str]:
    envelopes = [collected_envelope(number) for number in numbers]
    await bus.publish(INDICATORS_TOPIC, [message_for(envelope) for envelope in envelopes])
    return [envelope.message_id for envelope in envelopes]


async def dead_letters(bus: MemoryBus) -> list[ReceivedMessage]:
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) as receiver:
        return await receiver.receive(100, 0.01)


def depth(bus: MemoryBus) -> int:
    return bus.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION)


@contextlib.asynccontextmanager
async def running(
    bus: MemoryBus, handler: RecordingHandler | SettledForMe, options: ConsumerOptions = FAST
) -> AsyncIterator[Consumer[IndicatorCollected]]:
    consumer: Consumer[IndicatorCollected] = Consumer(bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION, handler, options)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_on_the_in_memory_bus_a_stop_ends_the_receive_wait_at_once() -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()
    # An hour's wait: only the stop can end the receive in time for `running`'s ten-second bound.
    async with running(bus, handler, replace(FAST, receive_wait_seconds=3600.0)):
        await publish(bus, 1)
        await eventually(lambda: depth(bus) == 0, what="the message completed")
    assert len(handler.seen) == 1


async def test_completes_every_message() -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()
    ids = await publish(bus, 1, 2, 3, 4, 5)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="completing all five")
    assert sorted(message_id for message_id, _ in handler.seen) == sorted(ids)


async def test_a_handler_that_returns_has_its_message_completed() -> None:
    bus = MemoryBus(topology())

    async def accept(payload: IndicatorCollected) -> None:
        return None

    handler = SettledForMe(accept)
    await publish(bus, 1, 2, 3)
    async with running(bus, handler) as consumer:
        await eventually(lambda: depth(bus) == 0, what="completing all three")
        assert consumer.counts().completed == 3
    assert sorted(handler.seen) == ["indicator--00000001", "indicator--00000002", "indicator--00000003"]


async def test_a_handler_settles_by_raising_dead_letter_or_try_later() -> None:
    bus = MemoryBus(topology())
    tried: list[str] = []

    async def refuse_one_and_defer_another(payload: IndicatorCollected) -> None:
        if payload.indicator_id.endswith("1"):
            raise PermanentFailure("GraphRejectedHost", "Graph answered HTTP 400 for this host")
        if payload.indicator_id.endswith("2") and payload.indicator_id not in tried:
            tried.append(payload.indicator_id)
            raise TryLater("Graph kept failing")

    handler = SettledForMe(refuse_one_and_defer_another)
    await publish(bus, 1, 2)
    async with running(bus, handler) as consumer:
        await eventually(lambda: depth(bus) == 0, what="settling both")
        counts = consumer.counts()
    assert (counts.dead_lettered, counts.abandoned, counts.completed) == (1, 1, 1)
    assert handler.seen.count("indicator--00000002") == 2
    [dead] = await dead_letters(bus)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        "GraphRejectedHost",
        "Graph answered HTTP 400 for this host",
    )


async def test_an_unexpected_exception_dead_letters_its_message_at_once_with_the_reason_and_the_consumer_goes_on() -> (
    None
):
    bus = MemoryBus(topology())

    async def broken_on_one(payload: IndicatorCollected) -> None:
        if payload.indicator_id.endswith("1"):
            raise OverflowError("date value out of range")

    handler = SettledForMe(broken_on_one)
    await publish(bus, 1, 2)
    async with running(bus, handler) as consumer:
        await eventually(lambda: depth(bus) == 0, what="completing one and dead-lettering the other")
        counts = consumer.counts()
    assert (counts.completed, counts.dead_lettered, counts.abandoned) == (1, 1, 0)
    # Tried once: a bug repeats on every delivery, so redelivering it would only hide its reason.
    assert handler.seen.count("indicator--00000001") == 1
    [dead] = await dead_letters(bus)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        PROCESSING_ERROR,
        "OverflowError: date value out of range",
    )


async def test_a_dead_letter_description_never_carries_a_secret() -> None:
    secret = "leaky-Secret-4f1c2e9b"
    register_secret(secret)
    bus = MemoryBus(topology())

    async def leaking(payload: IndicatorCollected) -> None:
        if payload.indicator_id.endswith("1"):
            raise ValueError(f"request failed with key {secret}")
        raise PermanentFailure("Rejected", f"Authorization: apikey someone:{secret}-2 was refused")

    handler = SettledForMe(leaking)
    await publish(bus, 1, 2)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="dead-lettering both")
    descriptions = [dead.dead_letter_description or "" for dead in await dead_letters(bus)]
    assert len(descriptions) == 2
    assert all(secret not in description and REDACTED in description for description in descriptions)


async def test_a_bus_failure_under_the_handler_gives_the_message_back() -> None:
    bus = MemoryBus(topology())
    failures = 0

    async def output_send_fails_once(payload: IndicatorCollected) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise BusUnavailable("sending to scored failed")

    handler = SettledForMe(output_send_fails_once)
    await publish(bus, 1)
    async with running(bus, handler) as consumer:
        await eventually(lambda: depth(bus) == 0, what="completing on the second delivery")
        counts = consumer.counts()
    assert (counts.abandoned, counts.completed, counts.dead_lettered) == (1, 1, 0)


async def test_a_handler_stuck_on_one_message_is_cut_off_and_the_message_dead_lettered() -> None:
    bus = MemoryBus(topology())

    async def stuck_on_one(payload: IndicatorCollected) -> None:
        if payload.indicator_id.endswith("1"):
            await asyncio.Event().wait()

    handler = SettledForMe(stuck_on_one)
    await publish(bus, 1, 2, 3)
    async with running(bus, handler, replace(FAST, handler_timeout_seconds=0.2)) as consumer:
        await eventually(lambda: depth(bus) == 0, what="settling all three")
        counts = consumer.counts()
    assert (counts.completed, counts.dead_lettered) == (2, 1)
    [dead] = await dead_letters(bus)
    assert dead.dead_letter_reason == PROCESSING_TIMEOUT
    assert "TIBRIDGE_HANDLER_TIMEOUT_SECONDS" in (dead.dead_letter_description or "")


async def test_waiting_on_a_dependency_does_not_count_against_the_handling_time() -> None:
    bus = MemoryBus(topology())
    limiter_wait = 0.6  # three times the budget, as when a rate limiter or a Retry-After window holds a lookup

    async def waits_for_a_rate_limiter(payload: IndicatorCollected) -> None:
        with waiting_on_dependency():
            await asyncio.sleep(limiter_wait)
        await asyncio.sleep(0.01)

    handler = SettledForMe(waits_for_a_rate_limiter)
    await publish(bus, 1, 2)
    async with running(bus, handler, replace(FAST, handler_timeout_seconds=0.2)) as consumer:
        await eventually(lambda: depth(bus) == 0, what="completing both")
        counts = consumer.counts()
    assert (counts.completed, counts.dead_lettered) == (2, 0)


async def test_the_budget_runs_again_once_the_dependency_answered() -> None:
    bus = MemoryBus(topology())

    async def waits_then_hangs(payload: IndicatorCollected) -> None:
        with waiting_on_dependency():
            await asyncio.sleep(0.3)
        await asyncio.Event().wait()

    handler = SettledForMe(waits_then_hangs)
    await publish(bus, 1)
    async with running(bus, handler, replace(FAST, handler_timeout_seconds=0.2)):
        await eventually(lambda: depth(bus) == 0, what="dead-lettering the message")
    [dead] = await dead_letters(bus)
    assert dead.dead_letter_reason == PROCESSING_TIMEOUT


async def test_a_manual_handler_that_raises_has_its_message_dead_lettered() -> None:
    bus = MemoryBus(topology())

    async def broken(item: InFlight[IndicatorCollected]) -> None:
        raise RuntimeError("the handler broke")

    handler = RecordingHandler(broken)
    [message_id] = await publish(bus, 1)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="dead-lettering the message")
    assert handler.seen == [(message_id, 0)]
    [dead] = await dead_letters(bus)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == (
        PROCESSING_ERROR,
        "RuntimeError: the handler broke",
    )


async def test_a_body_that_makes_decoding_raise_is_dead_lettered_as_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()

    def decode_that_breaks_its_promise(body: bytes) -> Envelope | Unreadable:
        if body == b"breaks the decoder":
            raise ValueError("the decoder broke")
        return decode(body)

    monkeypatch.setattr(consumer_module, "decode", decode_that_breaks_its_promise)
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"breaks the decoder", message_id="breaker")])
    [good] = await publish(bus, 1)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="settling both")
    assert handler.seen == [(good, 0)]
    [dead] = await dead_letters(bus)
    assert (dead.message_id, dead.dead_letter_reason) == ("breaker", "InvalidBody")


class RefusingDeadLetters(MemoryBus):
    """A bus whose dead-lettering fails, as when the broker drops the connection at that moment."""

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> MemoryReceiver:
        inner = super().receiver(topic, subscription, dead_letter=dead_letter, prefetch=prefetch)

        async def refuse(message: ReceivedMessage, reason: str, description: str) -> None:
            raise BusUnavailable("the broker did not answer")

        inner.dead_letter = refuse  # type: ignore[method-assign]
        return inner


async def test_a_failing_dead_letter_leaves_the_message_to_its_lock_and_the_consumer_goes_on() -> None:
    bus = RefusingDeadLetters(topology(lock_seconds=0.3))

    async def poison_then_good(payload: IndicatorCollected) -> None:
        if payload.indicator_id.endswith("1"):
            raise PermanentFailure("Rejected", "never valid")

    handler = SettledForMe(poison_then_good)
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{not json", message_id="unreadable")])
    await publish(bus, 1, 2)
    async with running(bus, handler) as consumer:
        await eventually(lambda: "indicator--00000002" in handler.seen, what="handling the good message")
        await eventually(lambda: consumer.counts().completed == 1, what="completing the good message")
        # Both poison messages come back when their locks lapse, and are handled again.
        await eventually(lambda: handler.seen.count("indicator--00000001") >= 2, what="the lock lapsing")


async def test_holds_no_more_than_max_in_flight() -> None:
    bus = MemoryBus(topology())
    release = asyncio.Event()

    async def hold(item: InFlight[IndicatorCollected]) -> None:
        await release.wait()
        await item.complete()

    handler = RecordingHandler(hold)
    await publish(bus, *range(1, 9))
    options = consumer_options(max_in_flight=3, receive_batch=10, receive_wait_seconds=0.05)
    async with running(bus, handler, options) as consumer:
        await eventually(lambda: len(handler.seen) == 3, what="taking the first three")
        await asyncio.sleep(0.2)  # room to over-receive, if the bound did not hold
        assert consumer.in_flight == 3
        assert len(handler.seen) == 3
        release.set()
        await eventually(lambda: depth(bus) == 0, what="completing all eight")
    assert len(handler.seen) == 8


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "InvalidBody"),
        (b'{"schema_version": "2.0", "payload": {}}', "UnsupportedSchemaVersion"),
        (b'{"schema_version": "1.0", "message_id": "x"}', "InvalidBody"),
        (b"[" * 100_000, "InvalidBody"),
    ],
    ids=["not-json", "unknown-major-version", "invalid-envelope", "too-deep"],
)
async def test_unreadable_body_is_dead_lettered_with_its_reason_and_the_consumer_goes_on(
    body: bytes, reason: str
) -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=body, message_id="unreadable")])
    [good] = await publish(bus, 1)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="settling both messages")
    assert handler.seen == [(good, 0)]
    [dead] = await dead_letters(bus)
    assert (dead.message_id, dead.dead_letter_reason) == ("unreadable", reason)
    assert dead.dead_letter_description


async def test_a_payload_of_the_wrong_type_is_dead_lettered() -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()
    await bus.publish(INDICATORS_TOPIC, [message_for(envelope_for(scored(1)))])
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="dead-lettering the scored message")
    assert handler.seen == []
    [dead] = await dead_letters(bus)
    assert dead.dead_letter_reason == UNEXPECTED_TYPE
    assert "IndicatorScored" in (dead.dead_letter_description or "")


async def test_a_permanent_failure_is_dead_lettered_at_once_with_its_reason() -> None:
    bus = MemoryBus(topology())

    async def refuse(item: InFlight[IndicatorCollected]) -> None:
        raise PermanentFailure("Rejected", "ThreatStream refused the value")

    handler = RecordingHandler(refuse)
    [message_id] = await publish(bus, 1)
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="dead-lettering the message")
    assert handler.seen == [(message_id, 0)]
    [dead] = await dead_letters(bus)
    assert (dead.dead_letter_reason, dead.dead_letter_description) == ("Rejected", "ThreatStream refused the value")


async def test_an_unavailable_dependency_pauses_the_consumer_until_the_probe_passes() -> None:
    bus = MemoryBus(topology())
    refusing = True

    async def needs_dependency(item: InFlight[IndicatorCollected]) -> None:
        if refusing:
            raise DependencyUnavailable("Graph answers 403: grant ThreatIntelligence.Read.All")
        await item.complete()

    handler = RecordingHandler(needs_dependency)
    [message_id] = await publish(bus, 1)
    async with running(bus, handler) as consumer:
        await eventually(lambda: consumer.paused_reason is not None, what="pausing")
        reason = await not_paused(consumer)()
        assert reason is not None
        assert "indicators/scorer is paused" in reason
        assert "ThreatIntelligence.Read.All" in reason
        await eventually(lambda: depth(bus) == 1 and consumer.in_flight == 0, what="abandoning the message")
        # A receive already under way as the pause began may hand the message over once more; no later one.
        attempts = len(handler.seen)
        await asyncio.sleep(0.1)  # several probe intervals: a paused consumer takes nothing
        assert len(handler.seen) == attempts <= 2

        refusing = False
        handler.recovered = True
        await eventually(lambda: depth(bus) == 0, what="resuming and completing")
        assert await not_paused(consumer)() is None
    assert handler.seen == [(message_id, count) for count in range(attempts + 1)]


class BreakingReceivers(MemoryBus):
    """A bus whose first receiver hands out one message, fails one receive and from then on answers nothing, as
    an SDK receiver whose link was torn down under a concurrent operation can."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.opened: list[MemoryReceiver] = []
        self.closed: list[MemoryReceiver] = []

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> MemoryReceiver:
        inner = super().receiver(topic, subscription, dead_letter=dead_letter, prefetch=prefetch)
        if not self.opened:
            receive, receives = inner.receive, 0

            async def breaking(
                max_messages: int, max_wait: float, *, until: asyncio.Event | None = None
            ) -> list[ReceivedMessage]:
                nonlocal receives
                receives += 1
                if receives == 1:
                    return await receive(1, max_wait, until=until)
                if receives == 2:
                    raise BusUnavailable("the link was detached")
                await asyncio.sleep(max_wait)
                return []

            inner.receive = breaking  # type: ignore[method-assign]
        close = inner.close

        async def recorded_close() -> None:
            self.closed.append(inner)
            await close()

        inner.close = recorded_close  # type: ignore[method-assign]
        self.opened.append(inner)
        return inner


async def test_a_receiver_that_failed_is_replaced_and_its_held_message_is_still_settled_through_it() -> None:
    bus = BreakingReceivers(topology())
    release = asyncio.Event()

    async def held_first(item: InFlight[IndicatorCollected]) -> None:
        if item.receiver is bus.opened[0]:
            await release.wait()
        await item.complete()

    handler = RecordingHandler(held_first)
    first, *rest = await publish(bus, 1, 2, 3)
    async with running(bus, handler, FAST):
        await eventually(lambda: len(handler.seen) == 3, what="the new receiver taking the other messages")
        assert len(bus.opened) == 2
        assert bus.closed == []  # the first still holds a message
        release.set()
        await eventually(lambda: depth(bus) == 0, what="completing the held message through its own receiver")
        await eventually(lambda: bus.closed == [bus.opened[0]], what="closing the receiver given up on")
    assert [message_id for message_id, _ in handler.seen] == [first, *rest]
    assert bus.closed == bus.opened


class RefusingRenewals(MemoryBus):
    """A bus whose lock renewals fail, as when the broker is briefly unreachable."""

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> MemoryReceiver:
        inner = super().receiver(topic, subscription, dead_letter=dead_letter, prefetch=prefetch)

        async def refuse(message: ReceivedMessage) -> datetime:
            raise BusUnavailable("the broker did not answer the renewal")

        inner.renew_lock = refuse  # type: ignore[method-assign]
        return inner


@pytest.mark.parametrize("renewals_work", [True, False], ids=["renewed", "renewal-fails"])
async def test_a_slow_message_keeps_its_lock_while_the_handler_works(renewals_work: bool) -> None:
    lock_seconds = 0.4
    bus = (MemoryBus if renewals_work else RefusingRenewals)(topology(lock_seconds))

    settlements: list[Settlement | None] = []

    async def slow(item: InFlight[IndicatorCollected]) -> None:
        if item.message.delivery_count == 0:
            await asyncio.sleep(lock_seconds * 3)
        settlements.append(await item.complete())

    handler = RecordingHandler(slow)
    # The check interval adapts to the lock period: no option is needed to keep short locks alive.
    options = consumer_options(receive_wait_seconds=0.05, shutdown_grace_seconds=2)
    [message_id] = await publish(bus, 1)
    async with running(bus, handler, options):
        await eventually(lambda: len(handler.seen) >= 1, what="receiving the message")
        await eventually(lambda: depth(bus) == 0, what="completing the message")
    # When renewal fails the lock lapses mid-work, so the bus hands the message out a second time.
    assert handler.seen == ([(message_id, 0)] if renewals_work else [(message_id, 0), (message_id, 1)])
    # The late completion learns that it came too late; the redelivered copy is the one completed.
    expected = [Settlement.COMPLETED] if renewals_work else [Settlement.COMPLETED, Settlement.LOCK_LOST]
    assert Counter(settlements) == Counter(expected)


class SlowRenewals(MemoryBus):
    """A bus whose lock renewals take a while, recording how many overlap on one receiver."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.peak_overlap = 0
        self.renewed = 0

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> MemoryReceiver:
        inner = super().receiver(topic, subscription, dead_letter=dead_letter, prefetch=prefetch)
        renew, overlapping = inner.renew_lock, 0

        async def slow_renewal(message: ReceivedMessage) -> datetime:
            nonlocal overlapping
            overlapping += 1
            self.peak_overlap = max(self.peak_overlap, overlapping)
            try:
                await asyncio.sleep(0.002)
                self.renewed += 1
                return await renew(message)
            finally:
                overlapping -= 1

        inner.renew_lock = slow_renewal  # type: ignore[method-assign]
        return inner


async def test_a_receiver_renews_one_lock_at_a_time_and_a_large_batch_keeps_every_lock() -> None:
    lock_seconds = 0.6
    bus = SlowRenewals(topology(lock_seconds))
    release = asyncio.Event()
    settlements: list[Settlement | None] = []

    async def held_until_released(item: InFlight[IndicatorCollected]) -> None:
        await release.wait()
        settlements.append(await item.complete())

    handler = RecordingHandler(held_until_released)
    await publish(bus, *range(40))
    options = consumer_options(
        max_in_flight=100, max_concurrency=100, receive_wait_seconds=0.05, shutdown_grace_seconds=2
    )
    async with running(bus, handler, options):
        await eventually(lambda: len(handler.seen) == 40, what="holding all forty")
        await asyncio.sleep(lock_seconds * 2)  # every lock renewed at least once
        release.set()
        await eventually(lambda: depth(bus) == 0, what="completing all forty")
    assert bus.renewed >= 40
    assert bus.peak_overlap == 1
    assert Counter(settlements) == Counter({Settlement.COMPLETED: 40})
    assert sorted(count for _, count in handler.seen) == [0] * 40  # no lock lapsed, nothing delivered twice


async def test_stop_lets_quick_work_finish_and_abandons_what_outlasts_the_grace_period() -> None:
    bus = MemoryBus(topology())

    async def quick_or_stuck(item: InFlight[IndicatorCollected]) -> None:
        if item.payload.indicator_id.endswith("1"):
            await asyncio.sleep(0.05)
            await item.complete()
        else:
            await asyncio.Event().wait()

    handler = RecordingHandler(quick_or_stuck)
    _quick, stuck = await publish(bus, 1, 2)
    async with running(bus, handler, FAST):
        await eventually(lambda: len(handler.seen) == 2, what="taking both")
    assert handler.flushed
    async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) as receiver:
        left = await receiver.receive(10, 0.01)
    assert [(message.message_id, message.delivery_count) for message in left] == [(stuck, 1)]


async def test_the_consumer_span_continues_the_producer_trace(span_exporter: InMemorySpanExporter) -> None:
    bus = MemoryBus(topology())
    handler = RecordingHandler()
    with trace.get_tracer("test.producer").start_as_current_span("collect") as producer:
        traceparent, _ = current_trace_context()
    envelope = collected_envelope(1, traceparent=traceparent)
    await bus.publish(INDICATORS_TOPIC, [message_for(envelope)])
    async with running(bus, handler):
        await eventually(lambda: depth(bus) == 0, what="completing the message")
    [consumer_span] = [span for span in span_exporter.get_finished_spans() if span.name == "indicators/scorer process"]
    assert consumer_span.context is not None
    assert consumer_span.parent is not None
    assert consumer_span.context.trace_id == producer.get_span_context().trace_id
    assert consumer_span.parent.span_id == producer.get_span_context().span_id
