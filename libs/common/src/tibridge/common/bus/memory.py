"""The in-memory bus: the embedded default, with the same semantics as Service Bus.

Peek-lock with a lock duration and expiry, delivery counts, dead-lettering past the max delivery count
(`MaxDeliveryCountExceeded`) and on TTL expiry, duplicate detection on message_id per topic, subscription
rules. Everything lives in one event loop; settlement of a message whose lock has lapsed raises `LockLost`.

Unlike Service Bus, what this bus holds dies with its process, so "on the bus" is no safe place for a producer
that could read its source again (the collector, whose watermark would skip what died). For it the bus follows
messages to the end of the pipeline: `delivery(message_ids)` says when every copy of those ids, on every
subscription, has been completed or dead-lettered by its consumer — the ids are the same on every topic, and a
consumer publishes what it derives from a message before it completes it, so the count of live copies of an id
reaches zero only once nothing downstream still holds it. A copy the bus itself dead-letters (past the
delivery count or the TTL) is counted lost: it would die with the process, so it must be read again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from datetime import datetime

from tibridge.common.aio import first_of
from tibridge.common.bus.port import (
    ClosesOnExit,
    EntityNotFound,
    LazyBody,
    LockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
)
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.topology import TOPOLOGY, SubscriptionSpec, TopicSpec, Topology

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"


@dataclass
class _Stored:
    _: KW_ONLY
    body: LazyBody = LazyBody()
    message_id: str
    application_properties: dict[str, PropertyValue]
    sequence_number: int
    enqueued_time: datetime
    expires_at: datetime
    delivery_count: int = 0
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    decoded: object = None


@dataclass
class _Lock:
    stored: _Stored
    locked_until: datetime


class Delivery:
    """A set of published messages followed to the end of the pipeline (see the module's docstring)."""

    def __init__(self) -> None:
        self.remaining = 0  # ids with a copy still on a subscription
        self.lost = 0  # ids a copy of which the bus dead-lettered itself
        self._finished = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.remaining == 0

    async def wait(self) -> None:
        """Returns once no copy of any of the ids is left on a subscription."""
        if self.remaining:
            await self._finished.wait()

    def _settled(self, lost: bool) -> None:
        self.remaining -= 1
        self.lost += lost
        if not self.remaining:
            self._finished.set()


class _Ledger:
    """Live copies per message id (on subscriptions, not dead-letter queues) and who waits for them to end."""

    def __init__(self) -> None:
        self._copies: dict[str, int] = {}
        self._watchers: dict[str, list[Delivery]] = {}
        # Ids a copy of which the bus dead-lettered; kept until the id is published again (failures are rare).
        self._lost: set[str] = set()

    def copied(self, message_id: str) -> None:
        if message_id not in self._copies:
            self._copies[message_id] = 0
            self._lost.discard(message_id)
        self._copies[message_id] += 1

    def settled(self, message_id: str, *, lost: bool) -> None:
        if lost:
            self._lost.add(message_id)
        copies = self._copies[message_id] - 1
        if copies:
            self._copies[message_id] = copies
            return
        del self._copies[message_id]
        was_lost = message_id in self._lost
        for delivery in self._watchers.pop(message_id, ()):
            delivery._settled(was_lost)

    def watch(self, message_ids: Iterable[str]) -> Delivery:
        delivery = Delivery()
        for message_id in message_ids:
            if message_id in self._copies:
                self._watchers.setdefault(message_id, []).append(delivery)
                delivery.remaining += 1
            elif message_id in self._lost:
                delivery.lost += 1
        if not delivery.remaining:
            delivery._finished.set()
        return delivery


class _Queue:
    """One subscription or its dead-letter queue: the messages ready, those locked, and the operations on them."""

    def __init__(self, spec: SubscriptionSpec, dead_letter_queue: _Queue | None, clock: Clock, ledger: _Ledger) -> None:
        self.spec = spec
        self._dead_letter_queue = dead_letter_queue
        self._clock = clock
        self._ledger = ledger
        self._ready: deque[_Stored] = deque()
        # In the order the locks lapse, as every lock (and renewal) lasts the lock duration from its moment (were
        # the wall clock to step back, a lock could only lapse late, never early).
        self._locked: dict[int, _Lock] = {}
        self._tokens = itertools.count()
        self.arrived = asyncio.Event()

    @property
    def is_dead_letter(self) -> bool:
        return self._dead_letter_queue is None

    @property
    def depth(self) -> int:
        self._expire_locks()
        return self.held

    @property
    def held(self) -> int:
        """Messages ready or locked, read without touching anything (safe from a metrics exporter's thread)."""
        return len(self._ready) + len(self._locked)

    def append(self, stored: _Stored) -> None:
        if not self.is_dead_letter:
            self._ledger.copied(stored.message_id)
        self._ready.append(stored)
        self.arrived.set()

    def lock_next(self, max_messages: int) -> list[ReceivedMessage]:
        """Up to `max_messages` live messages, locked; lapsed locks are released first."""
        now = self._clock.now()
        self._expire_locks(now)
        batch: list[ReceivedMessage] = []
        while len(batch) < max_messages and (stored := self._take(now)) is not None:
            batch.append(self._lock(stored, now))
        return batch

    def seconds_to_next_lock_expiry(self) -> float | None:
        first = next(iter(self._locked.values()), None)
        return None if first is None else max(0.0, (first.locked_until - self._clock.now()).total_seconds())

    def complete(self, message: ReceivedMessage) -> None:
        self._ended(self._settle(message), lost=False)

    def abandon(self, message: ReceivedMessage) -> None:
        self._give_back(self._settle(message))

    def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        stored = self._settle(message)
        self._to_dead_letter(stored, reason, description)
        self._ended(stored, lost=False)  # the consumer's own verdict on the message: its fate is decided

    def renew(self, message: ReceivedMessage) -> datetime:
        token, lock = self._held(message)
        lock.locked_until = self._clock.now() + self.spec.lock_duration
        message.locked_until = lock.locked_until
        self._locked[token] = self._locked.pop(token)  # now the last to lapse
        return lock.locked_until

    def _expire_locks(self, now: datetime | None = None) -> None:
        """Lapsed locks go back for redelivery (count + 1); they are the first in `_locked`."""
        now = now or self._clock.now()
        while self._locked:
            token, lock = next(iter(self._locked.items()))
            if lock.locked_until > now:
                return
            del self._locked[token]
            self._give_back(lock.stored)

    def _take(self, now: datetime) -> _Stored | None:
        """The next live message; those past their TTL are dead-lettered on the way."""
        while self._ready:
            stored = self._ready.popleft()
            if self.is_dead_letter or stored.expires_at > now:
                return stored
            self._to_dead_letter(stored, TTL_EXPIRED, "the message expired before it was completed")
            self._ended(stored, lost=True)
        return None

    def _give_back(self, stored: _Stored) -> None:
        stored.delivery_count += 1
        if not self.is_dead_letter and stored.delivery_count >= self.spec.max_delivery_count:
            self._to_dead_letter(
                stored, MAX_DELIVERY_COUNT_EXCEEDED, f"delivered {stored.delivery_count} times without being completed"
            )
            self._ended(stored, lost=True)
            return
        self._ready.appendleft(stored)
        self.arrived.set()

    def _ended(self, stored: _Stored, *, lost: bool) -> None:
        """A copy left this subscription for good (a dead-letter queue's own messages are not followed)."""
        if not self.is_dead_letter:
            self._ledger.settled(stored.message_id, lost=lost)

    def _to_dead_letter(self, stored: _Stored, reason: str, description: str) -> None:
        dead = self._dead_letter_queue
        if dead is None:
            raise LockLost("a message in a dead-letter queue cannot be dead-lettered again")
        dead.append(replace(stored, dead_letter_reason=reason, dead_letter_description=description))

    def _lock(self, stored: _Stored, now: datetime) -> ReceivedMessage:
        token = next(self._tokens)
        locked_until = now + self.spec.lock_duration
        self._locked[token] = _Lock(stored, locked_until)
        return ReceivedMessage(
            body=LazyBody.as_given(stored),
            message_id=stored.message_id,
            application_properties=stored.application_properties,  # read-only, copied once when published
            delivery_count=stored.delivery_count,
            sequence_number=stored.sequence_number,
            enqueued_time=stored.enqueued_time,
            locked_until=locked_until,
            dead_letter_reason=stored.dead_letter_reason,
            dead_letter_description=stored.dead_letter_description,
            handle=token,
            decoded=stored.decoded,
        )

    def _held(self, message: ReceivedMessage) -> tuple[int, _Lock]:
        """The message's live lock; a lapsed one is released for redelivery (only this one: settling stays O(1))."""
        token = message.handle
        lock = self._locked.get(token) if isinstance(token, int) else None
        if lock is None or not isinstance(token, int):
            raise LockLost(f"the lock on message {message.message_id} has expired or was already settled")
        if lock.locked_until <= self._clock.now():
            del self._locked[token]
            self._give_back(lock.stored)
            raise LockLost(f"the lock on message {message.message_id} has expired or was already settled")
        return token, lock

    def _settle(self, message: ReceivedMessage) -> _Stored:
        token, lock = self._held(message)
        del self._locked[token]
        return lock.stored


class MemoryBus:
    def __init__(self, topology: Topology = TOPOLOGY, clock: Clock | None = None) -> None:
        self._topology = topology
        self._clock = clock or SystemClock()
        self._sequence = 0
        self._seen: dict[str, OrderedDict[str, datetime]] = {t.name: OrderedDict() for t in topology.topics}
        self._queues: dict[tuple[str, str, bool], _Queue] = {}
        self._ledger = _Ledger()
        for topic in topology.topics:
            for sub in topic.subscriptions:
                dead = _Queue(sub, dead_letter_queue=None, clock=self._clock, ledger=self._ledger)
                self._queues[(topic.name, sub.name, True)] = dead
                self._queues[(topic.name, sub.name, False)] = _Queue(
                    sub, dead_letter_queue=dead, clock=self._clock, ledger=self._ledger
                )

    # -- the port -------------------------------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        spec = self._topic(topic)
        now = self._clock.now()
        seen = self._recently_seen(spec, now)
        targets = [
            (sub, self._queues[(topic, sub.name, False)], now + min(spec.message_ttl, sub.message_ttl))
            for sub in spec.subscriptions
        ]
        for message in messages:
            if message.message_id in seen:
                continue
            seen[message.message_id] = now
            properties = dict(message.application_properties)
            for sub, queue, expires_at in targets:
                if sub.accepts(properties):
                    self._sequence += 1
                    queue.append(
                        _Stored(
                            body=LazyBody.as_given(message),
                            message_id=message.message_id,
                            application_properties=properties,  # read-only from here on
                            sequence_number=self._sequence,
                            enqueued_time=now,
                            expires_at=expires_at,
                            decoded=message.decoded,
                        )
                    )
        # Service Bus's publish is network I/O that lets other tasks run; so does this one, or a producer
        # publishing a large window batch after batch would hold the loop (and every consumer) until it is done.
        await asyncio.sleep(0)

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> MemoryReceiver:
        key = (topic, subscription, dead_letter)
        if key not in self._queues:
            raise EntityNotFound(f"no subscription {topic}/{subscription} in the topology")
        return MemoryReceiver(self._queues[key], self._clock)

    async def check(self) -> None:
        return None

    async def has_pending(self, topic: str, subscription: str) -> bool:
        return self.depth(topic, subscription) > 0

    async def close(self) -> None:
        return None

    # -- what dies with the process ------------------------------------------------------------------------

    def delivery(self, message_ids: Iterable[str]) -> Delivery:
        """Follows messages just published to the end of the pipeline (see the module's docstring)."""
        return self._ledger.watch(message_ids)

    # -- inspection, for tests and the demo -----------------------------------------------------------------

    def depth(self, topic: str, subscription: str, *, dead_letter: bool = False) -> int:
        return self._queues[(topic, subscription, dead_letter)].depth

    def backlog(self, topic: str, subscription: str, *, dead_letter: bool = False) -> int:
        """Messages on the subscription (ready or locked), for the backlog gauge; unlike `depth` it changes nothing."""
        return self._queues[(topic, subscription, dead_letter)].held

    # -- internals ------------------------------------------------------------------------------------------

    def _topic(self, name: str) -> TopicSpec:
        try:
            return self._topology.topic(name)
        except KeyError as error:
            raise EntityNotFound(str(error)) from None

    def _recently_seen(self, spec: TopicSpec, now: datetime) -> OrderedDict[str, datetime]:
        """The topic's message ids of the duplicate detection window (older ones are let go here)."""
        seen = self._seen[spec.name]
        while seen:
            oldest_id, oldest_time = next(iter(seen.items()))
            if now - oldest_time < spec.duplicate_detection_window:
                break
            del seen[oldest_id]
        return seen


class MemoryReceiver(ClosesOnExit):
    def __init__(self, queue: _Queue, clock: Clock) -> None:
        self._queue = queue
        self._clock = clock

    async def receive(
        self, max_messages: int, max_wait: float, *, until: asyncio.Event | None = None
    ) -> list[ReceivedMessage]:
        deadline = self._clock.monotonic() + max_wait
        while True:
            batch = self._queue.lock_next(max_messages)
            if batch:
                return batch
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0 or (until is not None and until.is_set()):
                return []
            to_expiry = self._queue.seconds_to_next_lock_expiry()
            if to_expiry is not None:
                remaining = min(remaining, to_expiry + 0.001)
            self._queue.arrived.clear()
            # Nothing is locked while waiting, so giving the wait up at `until` strands nothing.
            stopped = [until.wait()] if until is not None else []
            await first_of(self._queue.arrived.wait(), asyncio.sleep(remaining), *stopped)

    async def complete(self, message: ReceivedMessage) -> None:
        self._queue.complete(message)

    async def abandon(self, message: ReceivedMessage) -> None:
        self._queue.abandon(message)

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        self._queue.dead_letter(message, reason, description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        return self._queue.renew(message)

    async def close(self) -> None:
        return None
