"""The bus port: publish to a topic, consume a subscription with peek-lock.

Two adapters implement it: `memory` (in-process, the embedded default) and `servicebus` (azure-servicebus aio).
Both honour the same semantics, checked by one contract suite: peek-lock with a lock duration, delivery count,
dead-lettering past the max delivery count, duplicate detection on message_id, subscription rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

PropertyValue = str | int | float | bool


class LazyBody:
    """A message's `body`: given as bytes, or as a function that makes them, called the first time the bytes are
    read (then kept). Service Bus reads every body; the in-memory bus hands the producer's object on and only a
    reader of the bytes (a dead-letter tool, a test) pays for encoding them."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    def __get__(self, message: object, owner: type | None = None) -> bytes:
        if message is None:
            raise AttributeError(self._slot)  # no class-level default: the field stays required
        body: bytes | Callable[[], bytes] = message.__dict__[self._slot]
        if callable(body):
            body = body()
            message.__dict__[self._slot] = body
        return body

    def __set__(self, message: Any, body: bytes | Callable[[], bytes]) -> None:
        message.__dict__[self._slot] = body

    @staticmethod
    def as_given(message: object) -> bytes | Callable[[], bytes]:
        """The body of `message` as it was given (bytes, or the function that makes them), without making it:
        for handing it on to another message."""
        body: bytes | Callable[[], bytes] = message.__dict__["_body"]
        return body


@dataclass(frozen=True)
class OutgoingMessage:
    _: KW_ONLY
    body: LazyBody = LazyBody()
    message_id: str
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    content_type: str = "application/json"
    # What the body says, as the producer had it (an immutable object): a bus within the process may hand it on
    # so its consumer need not parse the body again. Never sent anywhere.
    decoded: object = field(default=None, compare=False, repr=False)


@dataclass
class ReceivedMessage:
    """A message under peek-lock. `handle` is the adapter's own object, opaque to everyone else.

    `delivery_count` counts earlier deliveries, as the Service Bus SDK reports it: 0 on the first delivery.
    """

    _: KW_ONLY
    body: LazyBody = LazyBody()
    message_id: str
    application_properties: Mapping[str, PropertyValue]
    delivery_count: int
    sequence_number: int
    enqueued_time: datetime
    locked_until: datetime | None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    handle: object = None
    # The producer's `OutgoingMessage.decoded`, when the bus kept it (only within one process).
    decoded: object = field(default=None, compare=False, repr=False)


class Receiver(Protocol):
    """A peek-lock receiver on one subscription (or its dead-letter queue)."""

    async def receive(
        self, max_messages: int, max_wait: float, *, until: asyncio.Event | None = None
    ) -> list[ReceivedMessage]:
        """Up to `max_messages`, waiting at most `max_wait` seconds for the first one. The wait ends early once
        `until` is set where that strands nothing (in memory); Service Bus waits it out, since an SDK receive given
        up mid-wait may already hold messages under lock."""
        ...

    async def complete(self, message: ReceivedMessage) -> None: ...

    async def abandon(self, message: ReceivedMessage) -> None: ...

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None: ...

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        """Extends the lock and returns the new locked-until time (also stored on the message)."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ClosesOnExit:
    """`async with` for an adapter's receiver: leaving the block closes it."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Bus(Protocol):
    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Sends every message, in as few transfers as the transport allows; returns once all are accepted."""
        ...

    def receiver(self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0) -> Receiver: ...

    async def check(self) -> None:
        """Raises `BusUnavailable` when the bus cannot be reached (readiness)."""
        ...

    async def has_pending(self, topic: str, subscription: str) -> bool:
        """Whether any message, available or locked by a receiver, is still on the subscription."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class CountsBacklog(Protocol):
    """A bus that can say at no cost how many messages wait on a subscription (the in-memory bus; Service Bus
    needs the Manage right for it, which the services do not have)."""

    def backlog(self, topic: str, subscription: str, *, dead_letter: bool = False) -> int: ...


class BusError(Exception):
    """A bus operation failed; the message says what to check."""


class BusUnavailable(BusError):
    pass


class LockLost(BusError):
    """The message's lock expired or was lost; it will be redelivered, so the settlement is void."""


class EntityNotFound(BusError):
    pass
