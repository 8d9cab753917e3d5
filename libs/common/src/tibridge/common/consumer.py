"""The consumer loop every service runs: receive under peek-lock, decode, hand to a typed handler, settle.

The handler owns each message (`InFlight`) until it settles it, so a handler may settle at once (scorer) or
hold messages in a batch (publisher). The loop bounds what is in flight, renews locks while the handler holds
them, dead-letters unreadable bodies with a reason, abandons on failures so the bus redelivers, pauses on a
`DependencyUnavailable` (a configuration or outage problem, not a bad message) and, on stop, lets in-flight
work finish within a grace period, then abandons what is left so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tibridge.common.aio import first_of
from tibridge.common.bus.port import Bus, BusError, LockLost, ReceivedMessage, Receiver
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.contracts import Envelope, IndicatorCollected, IndicatorScored, Rejection, decode
from tibridge.common.telemetry import context_from_traceparent

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tibridge.consumer")
_meter = metrics.get_meter("tibridge.consumer")
_settled = _meter.create_counter("tibridge.messages.settled", description="Messages settled, by outcome")

P = TypeVar("P", IndicatorCollected, IndicatorScored)

UNEXPECTED_TYPE = "UnexpectedMessageType"
# Lock renewals in flight at once (each is one management request on Service Bus).
_CONCURRENT_RENEWALS = 32


class PermanentFailure(Exception):
    """This message can never be processed: dead-letter it with `reason`; the description says why."""

    def __init__(self, reason: str, description: str) -> None:
        self.reason = reason
        self.description = description
        super().__init__(f"{reason}: {description}")


class DependencyUnavailable(Exception):
    """A dependency refuses us (e.g. 401/403): stop taking messages, report not ready, keep the messages."""


@dataclass
class InFlight(Generic[P]):
    """A received message the handler owns until it settles it exactly once."""

    envelope: Envelope
    payload: P
    message: ReceivedMessage
    _receiver: Receiver
    _on_settled: Callable[[InFlight[P], str], None]
    settled: bool = field(default=False, init=False)

    async def complete(self) -> None:
        await self._settle("completed", self._receiver.complete(self.message))

    async def abandon(self) -> None:
        await self._settle("abandoned", self._receiver.abandon(self.message))

    async def dead_letter(self, reason: str, description: str) -> None:
        await self._settle("dead_lettered", self._receiver.dead_letter(self.message, reason, description))

    async def _settle(self, outcome: str, operation: Coroutine[Any, Any, None]) -> None:
        if self.settled:
            operation.close()
            return
        self.settled = True
        try:
            await operation
        except LockLost:
            # The bus will redeliver it; the deterministic message ids make the rework harmless.
            log.warning("lock lost before settling message %s; it will be redelivered", self.message.message_id)
            outcome = "lock_lost"
        finally:
            self._on_settled(self, outcome)


class Handler(Protocol[P]):
    payload_type: type[P]

    async def handle(self, item: InFlight[P]) -> None:
        """Process the message and settle it now or later (`item.complete()` etc.)."""
        ...

    async def flush(self) -> None:
        """On stop: finish buffered work (e.g. send a partial batch) before what is left is abandoned."""
        ...

    async def probe(self) -> bool:
        """While paused on DependencyUnavailable: True once the dependency accepts us again."""
        ...


@dataclass(frozen=True)
class ConsumerOptions:
    max_in_flight: int = 64
    max_concurrency: int = 16
    receive_batch: int = 32
    receive_wait_seconds: float = 1.0
    prefetch: int = 0
    shutdown_grace_seconds: float = 20.0
    probe_interval_seconds: float = 30.0
    lock_check_interval_seconds: float = 5.0


class Consumer(Generic[P]):
    def __init__(
        self,
        bus: Bus,
        topic: str,
        subscription: str,
        handler: Handler[P],
        options: ConsumerOptions = ConsumerOptions(),
        clock: Clock | None = None,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._subscription = subscription
        self._handler: Handler[P] = handler
        self._options = options
        self._clock = clock or SystemClock()
        self._in_flight: dict[int, InFlight[P]] = {}
        self._received_at: dict[int, datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity = asyncio.Event()
        self._semaphore = asyncio.Semaphore(options.max_concurrency)
        self.paused_reason: str | None = None
        self._shortest_lock_seconds = float("inf")
        self._renewals = asyncio.Semaphore(_CONCURRENT_RENEWALS)

    @property
    def name(self) -> str:
        return f"{self._topic}/{self._subscription}"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self, stop: asyncio.Event) -> None:
        async with self._bus.receiver(self._topic, self._subscription, prefetch=self._options.prefetch) as receiver:
            renewer = asyncio.create_task(self._renew_locks(receiver, stop))
            try:
                await self._receive_until(stop, receiver)
            finally:
                await self._drain()
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)

    # -- receiving ------------------------------------------------------------------------------------------

    async def _receive_until(self, stop: asyncio.Event, receiver: Receiver) -> None:
        while not stop.is_set():
            if self.paused_reason is not None:
                await self._wait_for_recovery(stop)
                continue
            capacity = self._options.max_in_flight - len(self._in_flight)
            if capacity <= 0:
                self._capacity.clear()
                await first_of(self._capacity.wait(), stop.wait())
                continue
            try:
                messages = await receiver.receive(
                    min(capacity, self._options.receive_batch), self._options.receive_wait_seconds
                )
            except BusError as error:
                log.warning("receiving from %s failed (%s); retrying", self.name, error)
                await first_of(asyncio.sleep(1.0), stop.wait())
                continue
            for message in messages:
                await self._dispatch(receiver, message)

    async def _dispatch(self, receiver: Receiver, message: ReceivedMessage) -> None:
        decoded = decode(message.body)
        if isinstance(decoded, Rejection):
            await self._reject(receiver, message, decoded.reason, decoded.description)
            return
        payload = decoded.payload
        if not isinstance(payload, self._handler.payload_type):
            await self._reject(
                receiver,
                message,
                UNEXPECTED_TYPE,
                f"{self.name} takes {self._handler.payload_type.__name__}, not {type(payload).__name__}",
            )
            return
        item: InFlight[P] = InFlight(decoded, payload, message, receiver, self._on_settled)
        self._in_flight[id(item)] = item
        now = self._clock.now()
        self._received_at[id(item)] = now
        if message.locked_until is not None:
            lock_seconds = (message.locked_until - now).total_seconds()
            self._shortest_lock_seconds = max(0.3, min(self._shortest_lock_seconds, lock_seconds))
        task = asyncio.create_task(self._handle(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reject(self, receiver: Receiver, message: ReceivedMessage, reason: str, description: str) -> None:
        log.warning("dead-lettering message %s from %s: %s: %s", message.message_id, self.name, reason, description)
        try:
            await receiver.dead_letter(message, reason, description)
            _settled.add(1, {"subscription": self.name, "outcome": "dead_lettered", "reason": reason})
        except LockLost:
            log.warning("lock lost before dead-lettering message %s", message.message_id)

    async def _handle(self, item: InFlight[P]) -> None:
        async with self._semaphore:
            with _tracer.start_as_current_span(
                f"{self.name} process",
                context=context_from_traceparent(item.envelope.traceparent, item.envelope.tracestate),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "servicebus",
                    "messaging.destination.name": self._topic,
                    "messaging.message.id": item.message.message_id,
                    "messaging.message.delivery_count": item.message.delivery_count,
                },
            ) as span:
                try:
                    await self._handler.handle(item)
                except PermanentFailure as failure:
                    span.set_status(Status(StatusCode.ERROR, failure.reason))
                    log.warning("dead-lettering message %s: %s", item.message.message_id, failure)
                    await item.dead_letter(failure.reason, failure.description)
                except DependencyUnavailable as error:
                    span.set_status(Status(StatusCode.ERROR, "dependency unavailable"))
                    if self.paused_reason is None:
                        log.error("pausing %s: %s", self.name, error)
                    self.paused_reason = str(error)
                    await item.abandon()
                except Exception as error:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                    log.exception("handling message %s failed; abandoning it for redelivery", item.message.message_id)
                    await item.abandon()

    def _on_settled(self, item: InFlight[P], outcome: str) -> None:
        self._in_flight.pop(id(item), None)
        self._received_at.pop(id(item), None)
        _settled.add(1, {"subscription": self.name, "outcome": outcome})
        self._capacity.set()

    # -- pause, locks, stop ---------------------------------------------------------------------------------

    async def _wait_for_recovery(self, stop: asyncio.Event) -> None:
        await first_of(asyncio.sleep(self._options.probe_interval_seconds), stop.wait())
        if stop.is_set():
            return
        try:
            recovered = await self._handler.probe()
        except Exception:
            log.exception("probing %s's dependency failed", self.name)
            recovered = False
        if recovered:
            log.info("resuming %s: its dependency accepts us again", self.name)
            self.paused_reason = None

    async def _renew_locks(self, receiver: Receiver, stop: asyncio.Event) -> None:
        """Renews a held message's lock once less than half of its lock period remains.

        The check runs at least three times per the shortest lock period seen, and renewals go out
        together, so a handler holding a large batch keeps every lock even with short lock durations.
        """
        while True:
            await asyncio.sleep(min(self._options.lock_check_interval_seconds, self._shortest_lock_seconds / 3))
            now = self._clock.now()
            due = []
            for key, item in list(self._in_flight.items()):
                locked_until = item.message.locked_until
                renewed_at = self._received_at.get(key)
                if item.settled or locked_until is None or renewed_at is None:
                    continue
                if (locked_until - now) * 2 < (locked_until - renewed_at):
                    due.append((key, item))
            await asyncio.gather(*(self._renew(receiver, key, item, now) for key, item in due))

    async def _renew(self, receiver: Receiver, key: int, item: InFlight[P], now: datetime) -> None:
        async with self._renewals:
            try:
                await receiver.renew_lock(item.message)
                self._received_at[key] = now
            except BusError as error:
                log.warning("renewing the lock of %s failed: %s", item.message.message_id, error)

    async def _drain(self) -> None:
        # One grace period for handlers and flush together: the orchestrator's kill deadline is fixed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.shutdown_grace_seconds
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._options.shutdown_grace_seconds)
        try:
            async with asyncio.timeout_at(deadline):
                await self._handler.flush()
        except TimeoutError:
            log.warning(
                "flushing %s did not finish within the grace period; its messages will be redelivered", self.name
            )
        except Exception:
            log.exception("flushing %s on stop failed; its messages will be redelivered", self.name)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        leftover = [item for item in self._in_flight.values() if not item.settled]
        if leftover:
            log.info("abandoning %d unfinished messages of %s for redelivery", len(leftover), self.name)
        for item in leftover:
            try:
                await item.abandon()
            except BusError as error:
                log.warning("abandoning %s failed (%s); its lock will lapse", item.message.message_id, error)
