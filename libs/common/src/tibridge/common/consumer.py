"""The consumer loop every service runs: receive under peek-lock, decode, hand to a typed handler, settle.

Settlement is by default the loop's: a `Handler` returns and the message is completed; it raises
`PermanentFailure` and the message is dead-lettered with that reason; it raises `TryLater` and the message goes
back to the bus; it raises `DependencyUnavailable` (a configuration or outage problem, not a bad message) and
the message goes back while the consumer pauses. A `BusError` (the bus failed under the handler, e.g. sending its
output) gives the message back too. Any other exception is a bug for this message, not a designed outcome: the
message is dead-lettered at once with reason `ProcessingError` and the exception's type and (redacted) text as
description — a handler can never crash the worker, and a bug is never "handled" by redelivering the message
until the subscription's max delivery count dead-letters it without a reason. Retrying a bug repeats it: the
adapters are what know which failures are transient, and they raise `TryLater`/`DependencyUnavailable` for them.
A dead-lettered message is kept whole; `tibridge dlq replay --reason ProcessingError` sends it round again
once the bug is fixed.

Handling one message is also bounded in time (`handler_timeout_seconds`): a handler still busy past it is
cancelled and its message dead-lettered with reason `ProcessingTimeout`. Time spent inside
`aio.waiting_on_dependency()` — a rate limiter, a Retry-After window, an API's answer, a send to the bus — does
not count: a handler
that waits for a dependency is slow for everyone, not stuck on its message, and every network call has its own
timeout. Work that never awaits (a runaway loop on one value) cannot be interrupted by any asyncio code; it is
bounded where the value is read (length caps before normalisation).

A `ManualHandler` opts into manual settlement: it owns each message (`InFlight`) until it settles it, so it
may hold messages in a batch (the publisher). The loop bounds what is in flight, renews locks while a handler
holds them, dead-letters unreadable bodies with a reason and, on stop, lets in-flight work finish within a grace
period (`flush` for a manual handler), then abandons what is left so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Generic, Protocol, TypeVar, runtime_checkable

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tibridge.common.aio import Overrun, first_of, time_budget
from tibridge.common.bus.port import Bus, BusError, CountsBacklog, LockLost, ReceivedMessage, Receiver
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.contracts import Envelope, IndicatorCollected, IndicatorScored, Unreadable, decode
from tibridge.common.logging import redact
from tibridge.common.metrics import Gauge, Snapshot, Tally
from tibridge.common.settings import ServiceSettings
from tibridge.common.telemetry import context_from_traceparent

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("tibridge.consumer")

P = TypeVar("P", IndicatorCollected, IndicatorScored)

UNEXPECTED_TYPE = "UnexpectedMessageType"
PROCESSING_ERROR = "ProcessingError"
PROCESSING_TIMEOUT = "ProcessingTimeout"
INVALID_BODY: Final = "InvalidBody"
# Dead-letter descriptions are for people: long enough for an exception's text, short enough to list.
MAX_DESCRIPTION = 1024
RECEIVE_WAIT_SECONDS = 1.0
LOCK_CHECK_INTERVAL_SECONDS = 5.0


class PermanentFailure(Exception):
    """This message can never be processed: dead-letter it with `reason`; the description says why."""

    def __init__(self, reason: str, description: str) -> None:
        self.reason = reason
        self.description = description
        super().__init__(f"{reason}: {description}")


class TryLater(Exception):
    """This message cannot be processed now (a dependency kept failing): give it back to the bus for redelivery."""


class DependencyUnavailable(Exception):
    """A dependency refuses us (e.g. 401/403): stop taking messages, report not ready, keep the messages."""


class Settlement(StrEnum):
    """How a message left its consumer: the `outcome` attribute of the settled-messages count."""

    COMPLETED = "completed"
    ABANDONED = "abandoned"
    DEAD_LETTERED = "dead_lettered"
    LOCK_LOST = "lock_lost"


@dataclass
class InFlight(Generic[P]):
    """A received message a manual handler owns until it settles it exactly once."""

    envelope: Envelope
    payload: P
    message: ReceivedMessage
    receiver: Receiver  # the one it came through: its lock is renewed and it is settled there
    _on_settled: Callable[[InFlight[P], Settlement], None]
    settled: bool = field(default=False, init=False)

    # Each returns how the message left (LOCK_LOST when its lock had lapsed), or None when it had already left.

    async def complete(self) -> Settlement | None:
        return await self._settle(Settlement.COMPLETED, self.receiver.complete(self.message))

    async def abandon(self) -> Settlement | None:
        return await self._settle(Settlement.ABANDONED, self.receiver.abandon(self.message))

    async def dead_letter(self, reason: str, description: str) -> Settlement | None:
        """The description is redacted and shortened here, so no dead-letter queue ever holds a secret."""
        operation = self.receiver.dead_letter(self.message, reason, safe_description(description))
        return await self._settle(Settlement.DEAD_LETTERED, operation)

    async def _settle(self, outcome: Settlement, operation: Coroutine[Any, Any, None]) -> Settlement | None:
        if self.settled:
            operation.close()
            return None
        self.settled = True
        try:
            await operation
        except LockLost:
            # The bus will redeliver it; the deterministic message ids make the rework harmless.
            log.warning("lock lost before settling message %s; it will be redelivered", self.message.message_id)
            outcome = Settlement.LOCK_LOST
        finally:
            self._on_settled(self, outcome)
        return outcome


def safe_description(text: str) -> str:
    """What a dead-letter description may say: no secret (`redact`), and at most MAX_DESCRIPTION characters."""
    return redact(text)[:MAX_DESCRIPTION]


class Handler(Protocol[P]):
    """Processes one payload; returning completes its message, the exceptions above settle it otherwise."""

    payload_type: type[P]

    async def handle(self, payload: P) -> None: ...

    async def probe(self) -> bool:
        """While paused on DependencyUnavailable: True once the dependency accepts us again."""
        ...


@runtime_checkable
class ManualHandler(Protocol[P]):
    """Opts into manual settlement: holds each message until it settles it (`item.complete()` etc.)."""

    payload_type: type[P]

    async def hold(self, item: InFlight[P]) -> None: ...

    async def flush(self) -> None:
        """On stop: finish held work (e.g. send a partial batch) before what is left is abandoned."""
        ...

    async def probe(self) -> bool:
        """While paused on DependencyUnavailable: True once the dependency accepts us again."""
        ...


@dataclass(frozen=True)
class ConsumerOptions:
    max_in_flight: int
    max_concurrency: int
    receive_batch: int
    prefetch: int
    shutdown_grace_seconds: float
    probe_interval_seconds: float
    # Handling one message, waits on dependencies not counted; None leaves it unbounded.
    handler_timeout_seconds: float | None = None
    receive_wait_seconds: float = RECEIVE_WAIT_SECONDS
    lock_check_interval_seconds: float = LOCK_CHECK_INTERVAL_SECONDS

    @classmethod
    def of(
        cls,
        settings: ServiceSettings,
        *,
        max_in_flight: int,
        max_concurrency: int,
        receive_batch: int,
        probe_interval_seconds: float,
    ) -> ConsumerOptions:
        """A service's consumer: the bus and shutdown settings every process shares, and the service's own."""
        return cls(
            max_in_flight=max_in_flight,
            max_concurrency=max_concurrency,
            receive_batch=receive_batch,
            prefetch=settings.servicebus.prefetch,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            probe_interval_seconds=probe_interval_seconds,
            handler_timeout_seconds=settings.handler_timeout_seconds,
        )


_IN_FLIGHT = Gauge.named("tibridge.messages.in_flight", "Messages received and not yet settled, by subscription")
_BACKLOG = Gauge.named(
    "tibridge.bus.backlog", "Messages on a subscription, ready or locked (on buses that count them: in-memory)"
)
_DEAD_LETTERS = Gauge.named(
    "tibridge.bus.dead_letters", "Messages in a subscription's dead-letter queue (on buses that count them: in-memory)"
)


@dataclass(frozen=True)
class SettledCounts(Snapshot):
    completed: int
    abandoned: int
    dead_lettered: int
    lock_lost: int


class Consumer(Generic[P]):
    def __init__(
        self,
        bus: Bus,
        topic: str,
        subscription: str,
        handler: Handler[P] | ManualHandler[P],
        options: ConsumerOptions,
        clock: Clock | None = None,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._subscription = subscription
        self._handler: Handler[P] | ManualHandler[P] = handler
        # The work the budget bounds; a plain handler's message is completed after it returns.
        self._work: Callable[[InFlight[P]], Awaitable[None]]
        self._flush: Callable[[], Awaitable[None]]
        self._completes_on_return = not isinstance(handler, ManualHandler)
        if isinstance(handler, ManualHandler):
            self._work, self._flush = handler.hold, handler.flush
        else:
            self._work, self._flush = _payload_to(handler), _nothing_held
        self._options = options
        self._clock = clock or SystemClock()
        self._in_flight: dict[int, InFlight[P]] = {}
        self._received_at: dict[int, datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # The receiver in use last; before it, those given up on that still hold messages.
        self._receivers: list[Receiver] = []
        self._capacity = asyncio.Event()
        self._semaphore = asyncio.Semaphore(options.max_concurrency)
        self.paused_reason: str | None = None
        self._shortest_lock_seconds = float("inf")
        self._settled = Tally("tibridge.messages.settled", "Messages settled, by subscription and outcome")
        _IN_FLIGHT.watch(self._held, subscription=self.name)
        if isinstance(bus, CountsBacklog):
            _BACKLOG.watch(self._backlog, subscription=self.name)
            _DEAD_LETTERS.watch(self._dead_letters, subscription=self.name)
        self._span_name = f"{self.name} process"

    @property
    def name(self) -> str:
        return f"{self._topic}/{self._subscription}"

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _held(self) -> float:
        return len(self._in_flight)

    def _backlog(self) -> float:
        assert isinstance(self._bus, CountsBacklog)
        return self._bus.backlog(self._topic, self._subscription)

    def _dead_letters(self) -> float:
        assert isinstance(self._bus, CountsBacklog)
        return self._bus.backlog(self._topic, self._subscription, dead_letter=True)

    def counts(self) -> SettledCounts:
        return SettledCounts(
            completed=self._settled.total(outcome=Settlement.COMPLETED),
            abandoned=self._settled.total(outcome=Settlement.ABANDONED),
            dead_lettered=self._settled.total(outcome=Settlement.DEAD_LETTERED),
            lock_lost=self._settled.total(outcome=Settlement.LOCK_LOST),
        )

    async def run(self, stop: asyncio.Event) -> None:
        renewer = asyncio.create_task(self._renew_locks(stop))
        try:
            while not stop.is_set():
                receiver = self._bus.receiver(self._topic, self._subscription, prefetch=self._options.prefetch)
                self._receivers.append(receiver)
                await self._receive_until(stop, receiver)
        finally:
            await self._drain()
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            for receiver in self._receivers:
                await _close_quietly(receiver)
            self._receivers.clear()

    # -- receiving ------------------------------------------------------------------------------------------

    async def _receive_until(self, stop: asyncio.Event, receiver: Receiver) -> None:
        """Receives through `receiver` until `stop`, or until a receive fails: an SDK receiver that failed (a
        dropped connection, a link torn down under a concurrent operation) may answer nothing from then on, so
        the caller opens a new one. Messages held from this one are still settled through it."""
        while not stop.is_set():
            await self._close_retired()
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
                    min(capacity, self._options.receive_batch), self._options.receive_wait_seconds, until=stop
                )
            except BusError as error:
                log.warning("receiving from %s failed (%s); receiving through a new receiver", self.name, error)
                await first_of(asyncio.sleep(1.0), stop.wait())
                return
            now = self._clock.now()
            for message in messages:
                await self._dispatch(receiver, message, now)

    async def _dispatch(self, receiver: Receiver, message: ReceivedMessage, now: datetime) -> None:
        try:
            # Within one process the bus may hand on the producer's envelope: the body it was encoded into
            # decodes to it (tests/reliability/test_decoding.py), so parsing it again would only cost time.
            decoded = message.decoded if isinstance(message.decoded, Envelope) else decode(message.body)
        except Exception as error:
            # `decode` promises never to raise; a body that breaks the promise is still only an unreadable body.
            log.exception("decoding message %s raised; treating its body as unreadable", message.message_id)
            decoded = Unreadable(INVALID_BODY, f"decoding the body failed: {type(error).__name__}")
        if isinstance(decoded, Unreadable):
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
        self._received_at[id(item)] = now
        if message.locked_until is not None:
            lock_seconds = (message.locked_until - now).total_seconds()
            self._shortest_lock_seconds = max(0.3, min(self._shortest_lock_seconds, lock_seconds))
        task = asyncio.create_task(self._handle(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reject(self, receiver: Receiver, message: ReceivedMessage, reason: str, description: str) -> None:
        description = safe_description(description)
        log.warning("dead-lettering message %s from %s: %s: %s", message.message_id, self.name, reason, description)
        try:
            await receiver.dead_letter(message, reason, description)
            self._settled.add(subscription=self.name, outcome=Settlement.DEAD_LETTERED, reason=reason)
        except LockLost:
            log.warning("lock lost before dead-lettering message %s", message.message_id)
        except BusError as error:
            log.warning(
                "dead-lettering message %s failed (%s); it comes back when its lock lapses", message.message_id, error
            )

    async def _handle(self, item: InFlight[P]) -> None:
        async with self._semaphore:
            span = _tracer.start_span(
                self._span_name,
                context=context_from_traceparent(item.envelope.traceparent, item.envelope.tracestate),
                kind=SpanKind.CONSUMER,
            )
            # start_span + use_span: what start_as_current_span does, without its two wrappers per message.
            with trace.use_span(span, end_on_exit=True):
                message_id = item.message.message_id
                if span.is_recording():  # without an exporter nothing records: no attributes to build
                    span.set_attributes(
                        {
                            "messaging.system": "servicebus",
                            "messaging.destination.name": self._topic,
                            "messaging.message.id": message_id,
                            "messaging.message.delivery_count": item.message.delivery_count,
                        }
                    )
                try:
                    await self._within_budget(self._work(item))
                    if self._completes_on_return:
                        await item.complete()
                except PermanentFailure as failure:
                    span.set_status(Status(StatusCode.ERROR, failure.reason))
                    log.warning("dead-lettering message %s: %s", message_id, safe_description(str(failure)))
                    await self._settle_or_let_lapse(item.dead_letter(failure.reason, failure.description))
                except TryLater as error:
                    span.set_status(Status(StatusCode.ERROR, "try later"))
                    log.warning("giving message %s back to the bus for later: %s", message_id, error)
                    await self._settle_or_let_lapse(item.abandon())
                except DependencyUnavailable as error:
                    span.set_status(Status(StatusCode.ERROR, "dependency unavailable"))
                    if self.paused_reason is None:
                        log.error("pausing %s: %s", self.name, error)
                    self.paused_reason = str(error)
                    await self._settle_or_let_lapse(item.abandon())
                except BusError as error:
                    # The bus, not the message: e.g. sending the handler's output failed. Nothing is lost by retrying.
                    span.set_status(Status(StatusCode.ERROR, "bus error"))
                    log.warning("the bus failed while handling message %s (%s); giving it back", message_id, error)
                    await self._settle_or_let_lapse(item.abandon())
                except Overrun as overrun:
                    span.set_status(Status(StatusCode.ERROR, PROCESSING_TIMEOUT))
                    description = (
                        f"handling the message took longer than {overrun.seconds:g} s "
                        "(TIBRIDGE_HANDLER_TIMEOUT_SECONDS), not counting waits on dependencies"
                    )
                    log.error("dead-lettering message %s as %s: %s", message_id, PROCESSING_TIMEOUT, description)
                    await self._settle_or_let_lapse(item.dead_letter(PROCESSING_TIMEOUT, description))
                except Exception as error:
                    description = safe_description(f"{type(error).__name__}: {error}")
                    span.add_event(
                        "exception", {"exception.type": type(error).__name__, "exception.message": description}
                    )
                    span.set_status(Status(StatusCode.ERROR, PROCESSING_ERROR))
                    log.error(
                        "handling message %s failed; dead-lettering it as %s: %s",
                        message_id,
                        PROCESSING_ERROR,
                        description,
                        exc_info=error,
                    )
                    await self._settle_or_let_lapse(item.dead_letter(PROCESSING_ERROR, description))

    async def _within_budget(self, work: Awaitable[None]) -> None:
        seconds = self._options.handler_timeout_seconds
        if seconds is None:
            await work
            return
        async with time_budget(seconds):
            await work

    async def _settle_or_let_lapse(self, settlement: Awaitable[Settlement | None]) -> None:
        try:
            await settlement
        except BusError as error:
            log.warning("settling a message failed (%s); it comes back when its lock lapses", error)

    def _on_settled(self, item: InFlight[P], outcome: Settlement) -> None:
        self._in_flight.pop(id(item), None)
        self._received_at.pop(id(item), None)
        self._settled.add(subscription=self.name, outcome=outcome)
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

    async def _close_retired(self) -> None:
        """Closes the receivers given up on once none of their messages is held any more."""
        for receiver in self._receivers[:-1]:
            if not any(item.receiver is receiver for item in self._in_flight.values()):
                self._receivers.remove(receiver)
                await _close_quietly(receiver)

    async def _renew_locks(self, stop: asyncio.Event) -> None:
        """Renews a held message's lock once less than half of its lock period remains.

        The check runs at least three times per the shortest lock period seen, so a handler holding a large
        batch keeps every lock even with short lock durations. Each receiver renews one lock at a time (receivers
        side by side): with dozens of renewals in flight on one Service Bus SDK receiver its management link
        failed ("Management Operation error occurred") and the receiver shut down, leaving its messages to lapse
        (seen over the wire-level double with the publisher's batches); the SDK renews one lock per request.
        """
        while True:
            await asyncio.sleep(min(self._options.lock_check_interval_seconds, self._shortest_lock_seconds / 3))
            now = self._clock.now()
            due: dict[int, list[tuple[int, InFlight[P]]]] = {}
            for key, item in list(self._in_flight.items()):
                locked_until = item.message.locked_until
                renewed_at = self._received_at.get(key)
                if item.settled or locked_until is None or renewed_at is None:
                    continue
                if (locked_until - now) * 2 < (locked_until - renewed_at):
                    due.setdefault(id(item.receiver), []).append((key, item))
            await asyncio.gather(*(self._renew(items, now) for items in due.values()))

    async def _renew(self, items: list[tuple[int, InFlight[P]]], now: datetime) -> None:
        """Renews the locks of messages held through one receiver, one after another, soonest to lapse first."""
        items.sort(key=lambda pair: pair[1].message.locked_until or now)
        for key, item in items:
            if item.settled:
                continue
            try:
                await item.receiver.renew_lock(item.message)
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
                await self._flush()
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


def _payload_to(handler: Handler[P]) -> Callable[[InFlight[P]], Awaitable[None]]:
    async def handle(item: InFlight[P]) -> None:
        await handler.handle(item.payload)

    return handle


async def _nothing_held() -> None:
    return None


async def _close_quietly(receiver: Receiver) -> None:
    try:
        await receiver.close()
    except BusError as error:
        log.warning("closing a receiver failed (%s); the bus lets its locks lapse", error)
