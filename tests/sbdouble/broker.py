"""The double's entity state, with no I/O: topics fan out to subscriptions, peek-lock, dead-lettering.

Time comes in as `now` (epoch seconds) on every call, so this is plain state-machine code the AMQP layer
drives; locks expire only when `expire_locks` is called.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from tests.sbdouble.config import NamespaceConfig, SubscriptionConfig, TopicConfig

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"


@dataclass(frozen=True)
class QueueKey:
    """A subscription, or its dead-letter queue."""

    topic: str
    subscription: str
    dead_letter: bool = False

    def __str__(self) -> str:
        suffix = "/$DeadLetterQueue" if self.dead_letter else ""
        return f"{self.topic}/Subscriptions/{self.subscription}{suffix}"


@dataclass(frozen=True)
class StoredMessage:
    """A message as a sender gave it; the encoded sections the double does not change stay encoded."""

    message_id: str | None
    application_properties: Mapping[str, object]
    annotations: Mapping[object, object]
    properties_section: bytes
    body_sections: bytes


@dataclass
class Entry:
    """One subscription's copy of a message."""

    message: StoredMessage
    sequence_number: int
    enqueued_time: float
    delivery_count: int = 0
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None

    @property
    def application_properties(self) -> dict[str, object]:
        properties = dict(self.message.application_properties)
        if self.dead_letter_reason is not None:
            properties[DEAD_LETTER_REASON] = self.dead_letter_reason
            properties[DEAD_LETTER_DESCRIPTION] = self.dead_letter_description or ""
        return properties


@dataclass
class Lease:
    token: uuid.UUID
    queue: QueueKey
    entry: Entry
    locked_until: float


class LockLostError(Exception):
    """The lock token is unknown: it expired, was settled, or never existed."""


@dataclass
class _Queue:
    config: SubscriptionConfig
    available: list[tuple[int, Entry]] = field(default_factory=list)

    def push(self, entry: Entry) -> None:
        heapq.heappush(self.available, (entry.sequence_number, entry))

    def pop(self) -> Entry | None:
        return heapq.heappop(self.available)[1] if self.available else None


class Broker:
    def __init__(self, config: NamespaceConfig) -> None:
        self._topics: dict[str, TopicConfig] = config.topics
        self._queues: dict[QueueKey, _Queue] = {}
        for topic in config.topics.values():
            for sub in topic.subscriptions.values():
                self._queues[QueueKey(topic.name, sub.name)] = _Queue(sub)
                self._queues[QueueKey(topic.name, sub.name, dead_letter=True)] = _Queue(sub)
        self._leases: dict[uuid.UUID, Lease] = {}
        self._seen: dict[str, OrderedDict[str, float]] = {name: OrderedDict() for name in config.topics}
        self._sequence = itertools.count(1)

    def has_topic(self, topic: str) -> bool:
        return topic in self._topics

    def has_queue(self, key: QueueKey) -> bool:
        return key in self._queues

    def publish(self, topic: str, message: StoredMessage, now: float) -> list[QueueKey]:
        """Fans the message out to the subscriptions whose rules accept it; returns them (none for a duplicate)."""
        spec = self._topics[topic]
        if self._is_duplicate(spec, message.message_id, now):
            return []
        sequence_number = next(self._sequence)
        targets = [
            QueueKey(topic, sub.name)
            for sub in spec.subscriptions.values()
            if sub.accepts(message.application_properties)
        ]
        for key in targets:
            self._queues[key].push(Entry(message, sequence_number, now))
        return targets

    def lease(self, key: QueueKey, now: float) -> Lease | None:
        queue = self._queues[key]
        entry = queue.pop()
        if entry is None:
            return None
        lease = Lease(uuid.uuid4(), key, entry, now + queue.config.lock_duration)
        self._leases[lease.token] = lease
        return lease

    def complete(self, token: uuid.UUID) -> None:
        self._take(token)

    def release(self, token: uuid.UUID) -> QueueKey:
        """Back to the queue without counting a delivery: the client never looked at it."""
        lease = self._take(token)
        self._queues[lease.queue].push(lease.entry)
        return lease.queue

    def abandon(self, token: uuid.UUID) -> QueueKey:
        """Counts a delivery; returns where the message went (its queue, or the dead-letter queue)."""
        return self._redeliver(self._take(token))

    def dead_letter(self, token: uuid.UUID, reason: str, description: str) -> QueueKey:
        lease = self._take(token)
        if lease.queue.dead_letter:
            raise LockLostError("a message in a dead-letter queue cannot be dead-lettered again")
        return self._to_dead_letter(lease.queue, lease.entry, reason, description)

    def renew(self, token: uuid.UUID, now: float) -> float:
        lease = self._held(token)
        lease.locked_until = now + self._queues[lease.queue].config.lock_duration
        return lease.locked_until

    def expire_locks(self, now: float) -> set[QueueKey]:
        """Lapsed locks count as a delivery and go back (or to the dead-letter queue); returns the queues touched."""
        lapsed = [lease for lease in self._leases.values() if lease.locked_until <= now]
        for lease in lapsed:
            del self._leases[lease.token]
        return {self._redeliver(lease) for lease in lapsed}

    def forget_duplicates(self, now: float) -> None:
        for name, seen in self._seen.items():
            window = self._topics[name].duplicate_detection_window or 0.0
            while seen and next(iter(seen.values())) + window <= now:
                seen.popitem(last=False)

    def peek(self, key: QueueKey, from_sequence_number: int, count: int) -> list[Entry]:
        """Available and locked messages, in sequence order, without locking them."""
        locked = (lease.entry for lease in self._leases.values() if lease.queue == key)
        entries = sorted(itertools.chain(self._available(key), locked), key=lambda entry: entry.sequence_number)
        return [entry for entry in entries if entry.sequence_number >= from_sequence_number][:count]

    # -- test hooks -------------------------------------------------------------------------------------------

    def set_lock_duration(self, topic: str, subscription: str, seconds: float) -> None:
        self._subscription(topic, subscription).lock_duration = seconds

    def set_max_delivery_count(self, topic: str, subscription: str, count: int) -> None:
        self._subscription(topic, subscription).max_delivery_count = count

    def depth(self, key: QueueKey) -> int:
        return len(self._queues[key].available) + sum(1 for lease in self._leases.values() if lease.queue == key)

    def entries(self, key: QueueKey) -> list[Entry]:
        return self.peek(key, 0, self.depth(key))

    # -- internals --------------------------------------------------------------------------------------------

    def _subscription(self, topic: str, subscription: str) -> SubscriptionConfig:
        return self._queues[QueueKey(topic, subscription)].config

    def _available(self, key: QueueKey) -> Iterator[Entry]:
        return (entry for _, entry in self._queues[key].available)

    def _is_duplicate(self, spec: TopicConfig, message_id: str | None, now: float) -> bool:
        if spec.duplicate_detection_window is None or message_id is None:
            return False
        self.forget_duplicates(now)
        seen = self._seen[spec.name]
        if message_id in seen:
            return True
        seen[message_id] = now
        return False

    def _held(self, token: uuid.UUID) -> Lease:
        lease = self._leases.get(token)
        if lease is None:
            raise LockLostError(f"the lock {token} expired, was already settled, or never existed")
        return lease

    def _take(self, token: uuid.UUID) -> Lease:
        lease = self._held(token)
        del self._leases[token]
        return lease

    def _redeliver(self, lease: Lease) -> QueueKey:
        lease.entry.delivery_count += 1
        config = self._queues[lease.queue].config
        if not lease.queue.dead_letter and lease.entry.delivery_count >= config.max_delivery_count:
            return self._to_dead_letter(
                lease.queue,
                lease.entry,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"delivered {lease.entry.delivery_count} times without being completed",
            )
        self._queues[lease.queue].push(lease.entry)
        return lease.queue

    def _to_dead_letter(self, key: QueueKey, entry: Entry, reason: str, description: str) -> QueueKey:
        dead_key = replace(key, dead_letter=True)
        self._queues[dead_key].push(replace(entry, dead_letter_reason=reason, dead_letter_description=description))
        return dead_key
