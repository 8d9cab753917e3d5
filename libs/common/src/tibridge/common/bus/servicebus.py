"""The `servicebus` bus adapter: azure-servicebus (aio) behind the bus port.

One `ServiceBusClient` per adapter (the wiring makes one adapter per process); a sender per topic, reused;
publishes packed into as few `create_message_batch` batches as the link's size limit allows; receivers in
peek-lock with a bounded prefetch. Every operation runs under a timeout, and the SDK's retries are bounded.
The SDK's errors become the port's: `LockLost`, `EntityNotFound`, `BusUnavailable`, `BusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Self

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityAlreadyExistsError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    SessionLockLostError,
)
from pydantic import SecretStr

from tibridge.common.bus.port import (
    BusError,
    BusUnavailable,
    ClosesOnExit,
    EntityNotFound,
    LockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
)
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION

log = logging.getLogger(__name__)

CONNECTION_STRING_SETTING = "TIBRIDGE_SERVICEBUS_CONNECTION_STRING"
NAMESPACE_SETTING = "TIBRIDGE_SERVICEBUS_NAMESPACE"
DEFAULT_OPERATION_TIMEOUT = 30.0
READINESS_SUBSCRIPTION = (INDICATORS_TOPIC, SCORER_SUBSCRIPTION)  # `check()` peeks at it
MIN_RECEIVE_WAIT = 0.05  # the SDK refuses a zero wait
RETRY_TOTAL = 3
RETRY_BACKOFF_MAX = 10.0
# The service puts the dead-letter reason among the application properties; the port has fields for them.
_DEAD_LETTER_PROPERTIES = frozenset({"DeadLetterReason", "DeadLetterErrorDescription"})
# Failures that trying again cannot fix; every other Service Bus error (connection, timeout, busy, an AMQP
# condition the SDK has no class for) may pass by itself, so it reads as the bus being unavailable.
_PERMANENT_ERRORS = (
    MessageSizeExceededError,
    MessageNotFoundError,
    MessagingEntityAlreadyExistsError,
    ServiceBusQuotaExceededError,
    SessionLockLostError,
)


class ServiceBusBus:
    """The bus on Azure Service Bus (or its emulator, or the wire-level test double)."""

    def __init__(
        self,
        client: ServiceBusClient,
        *,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        readiness_subscription: tuple[str, str] = READINESS_SUBSCRIPTION,
    ) -> None:
        self._client = client
        self._timeout = operation_timeout
        self._readiness_subscription = readiness_subscription
        self._senders: dict[str, ServiceBusSender] = {}
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._probe: ServiceBusReceiver | None = None

    @classmethod
    def from_connection_string(
        cls,
        connection_string: SecretStr | str,
        *,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        readiness_subscription: tuple[str, str] = READINESS_SUBSCRIPTION,
    ) -> Self:
        """From a namespace or emulator connection string (`Endpoint=sb://…;SharedAccessKeyName=…;…`)."""
        secret = connection_string.get_secret_value() if isinstance(connection_string, SecretStr) else connection_string
        try:
            client = ServiceBusClient.from_connection_string(
                secret, retry_total=RETRY_TOTAL, retry_backoff_max=RETRY_BACKOFF_MAX
            )
        except ValueError as error:
            # The SDK's messages never quote the string, so they are safe to pass on.
            raise BusError(
                f"{CONNECTION_STRING_SETTING} is not a Service Bus connection string ({error}); expected "
                "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<name>;SharedAccessKey=<key>."
            ) from None
        return cls(client, operation_timeout=operation_timeout, readiness_subscription=readiness_subscription)

    @classmethod
    def from_namespace(
        cls,
        namespace: str,
        credential: AsyncTokenCredential,
        *,
        operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
        readiness_subscription: tuple[str, str] = READINESS_SUBSCRIPTION,
    ) -> Self:
        """From a fully-qualified namespace and a token credential (e.g. azure-identity's DefaultAzureCredential)."""
        if not namespace or "/" in namespace or ":" in namespace:
            raise BusError(
                f"{NAMESPACE_SETTING} must be a fully-qualified namespace such as "
                f"contoso.servicebus.windows.net, not {namespace!r}."
            )
        client = ServiceBusClient(namespace, credential, retry_total=RETRY_TOTAL, retry_backoff_max=RETRY_BACKOFF_MAX)
        return cls(client, operation_timeout=operation_timeout, readiness_subscription=readiness_subscription)

    # -- the port -----------------------------------------------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        lock = self._send_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            with _translated(f"publishing to topic {topic!r}"):
                try:
                    await self._send_in_batches(self._sender(topic), messages)
                except (ServiceBusError, TimeoutError):
                    # A failed sender may be shut down by the SDK; the next publish starts afresh.
                    await self._drop_sender(topic)
                    raise

    def receiver(
        self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0
    ) -> ServiceBusSubscriptionReceiver:
        receiver = self._client.get_subscription_receiver(
            topic,
            subscription,
            sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead_letter else None,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=prefetch,
        )
        suffix = "/$DeadLetterQueue" if dead_letter else ""
        return ServiceBusSubscriptionReceiver(receiver, f"{topic}/{subscription}{suffix}", self._timeout)

    async def check(self) -> None:
        topic, subscription = self._readiness_subscription
        try:
            with _translated(f"peeking at subscription {topic}/{subscription}"):
                async with asyncio.timeout(self._timeout):
                    if self._probe is None:
                        self._probe = self._client.get_subscription_receiver(topic, subscription)
                    await self._probe.peek_messages(max_message_count=1)
        except BusError as error:
            await self._drop_probe()
            raise BusUnavailable(f"Service Bus is not ready: {error}") from None

    async def has_pending(self, topic: str, subscription: str) -> bool:
        # A peek sees locked messages too, and a fresh receiver peeks from the first sequence number.
        with _translated(f"peeking at subscription {topic}/{subscription}"):
            async with (
                asyncio.timeout(self._timeout),
                self._client.get_subscription_receiver(topic, subscription) as peek,
            ):
                return bool(await peek.peek_messages(max_message_count=1))

    async def check_send(self, topic: str) -> None:
        """Opens a sender link to `topic` and closes it, sending nothing: Service Bus authorises the link's Send
        claim when it is attached (`tibridge preflight`). Raises the port's errors."""
        with _translated(f"opening a sender on topic {topic!r}"):
            async with asyncio.timeout(self._timeout), self._client.get_topic_sender(topic):
                pass

    async def close(self) -> None:
        # Closing the client closes every sender and receiver it made.
        self._senders.clear()
        self._probe = None
        await self._client.close()

    # -- internals ----------------------------------------------------------------------------------------------

    def _sender(self, topic: str) -> ServiceBusSender:
        if topic not in self._senders:
            self._senders[topic] = self._client.get_topic_sender(topic)
        return self._senders[topic]

    async def _drop_sender(self, topic: str) -> None:
        sender = self._senders.pop(topic, None)
        if sender is not None:
            with contextlib.suppress(Exception):
                await sender.close()

    async def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.close()

    async def _send_in_batches(self, sender: ServiceBusSender, messages: Sequence[OutgoingMessage]) -> None:
        """Fills each batch up to the link's size limit and sends it; each send has the operation timeout."""
        async with asyncio.timeout(self._timeout):
            batch = await sender.create_message_batch()
        for message in messages:
            outgoing = _to_servicebus(message)
            try:
                batch.add_message(outgoing)
                continue
            except MessageSizeExceededError:
                if len(batch) == 0:
                    raise BusError(
                        f"message {message.message_id} is larger than the largest batch Service Bus takes "
                        f"({batch.max_size_in_bytes} bytes)"
                    ) from None
            async with asyncio.timeout(self._timeout):
                await sender.send_messages(batch)
                batch = await sender.create_message_batch()
            batch.add_message(outgoing)
        async with asyncio.timeout(self._timeout):
            await sender.send_messages(batch)


class ServiceBusSubscriptionReceiver(ClosesOnExit):
    """A peek-lock receiver on one subscription or its dead-letter queue."""

    def __init__(self, receiver: ServiceBusReceiver, entity: str, operation_timeout: float) -> None:
        self._receiver = receiver
        self._entity = entity
        self._timeout = operation_timeout
        self._open = False

    async def receive(
        self, max_messages: int, max_wait: float, *, until: asyncio.Event | None = None
    ) -> list[ReceivedMessage]:
        # `until` is not honoured: see the port.
        wait = max(max_wait, MIN_RECEIVE_WAIT)
        with _translated(f"receiving from {self._entity}"):
            async with asyncio.timeout(wait + self._timeout):
                if not self._open:
                    # The SDK would give opening the link only `wait`: too little for a new connection.
                    await self._receiver.__aenter__()
                    self._open = True
                try:
                    received = await self._receiver.receive_messages(max_message_count=max_messages, max_wait_time=wait)
                except OperationTimeoutError:
                    self._open = False  # the link dropped and did not reopen within `wait`: reopen next time
                    raise
        return [_from_servicebus(message) for message in received]

    async def complete(self, message: ReceivedMessage) -> None:
        with _translated(f"completing message {message.message_id} on {self._entity}"):
            async with asyncio.timeout(self._timeout):
                await self._receiver.complete_message(_handle(message))

    async def abandon(self, message: ReceivedMessage) -> None:
        with _translated(f"abandoning message {message.message_id} on {self._entity}"):
            async with asyncio.timeout(self._timeout):
                await self._receiver.abandon_message(_handle(message))

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        with _translated(f"dead-lettering message {message.message_id} on {self._entity}"):
            async with asyncio.timeout(self._timeout):
                await self._receiver.dead_letter_message(_handle(message), reason=reason, error_description=description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        with _translated(f"renewing the lock on message {message.message_id} on {self._entity}"):
            async with asyncio.timeout(self._timeout):
                locked_until = await self._receiver.renew_message_lock(_handle(message), timeout=self._timeout)
        message.locked_until = locked_until
        return locked_until

    async def close(self) -> None:
        with _translated(f"closing the receiver on {self._entity}"):
            async with asyncio.timeout(self._timeout):
                await self._receiver.close()


@contextlib.contextmanager
def _translated(operation: str) -> Iterator[None]:
    """The SDK's exceptions as the port's, each message saying what failed and what to check."""
    try:
        yield
    except BusError:  # the adapter's own, already the port's
        raise
    except MessageLockLostError:
        raise LockLost(f"{operation}: the lock expired or was lost; the message will be redelivered") from None
    except MessagingEntityNotFoundError:
        raise EntityNotFound(f"{operation}: the entity does not exist in the namespace") from None
    except (ServiceBusAuthenticationError, ServiceBusAuthorizationError) as error:
        raise BusUnavailable(
            f"{operation}: Service Bus refused the credential ({type(error).__name__}); check "
            f"{CONNECTION_STRING_SETTING} or the identity's Service Bus data roles"
        ) from None
    except MessageAlreadySettled:
        raise BusError(f"{operation}: the message was already settled") from None
    except ValueError as error:
        # The SDK's word for a message whose receiver link has shut down since (e.g. after a reconnect): its lock
        # is gone with the link, so the bus delivers it again, as for a lost lock.
        raise LockLost(f"{operation}: {error}; the message will be redelivered") from None
    except _PERMANENT_ERRORS as error:
        raise BusError(f"{operation}: {type(error).__name__}: {error.message}") from None
    except ServiceBusError as error:
        raise BusUnavailable(f"{operation}: {type(error).__name__}: {error.message}") from None
    except TimeoutError:
        raise BusUnavailable(f"{operation}: Service Bus did not answer in time") from None
    except Exception as error:
        # The SDK's own failures once a handler broke under it (AttributeError, KeyError from its AMQP layer): the
        # client is unusable, not the message wrong; callers retry on a new receiver and messages come back.
        log.warning("%s: the Service Bus client failed (%r)", operation, error)
        raise BusUnavailable(f"{operation}: the Service Bus client failed ({type(error).__name__})") from None


def _handle(message: ReceivedMessage) -> ServiceBusReceivedMessage:
    if not isinstance(message.handle, ServiceBusReceivedMessage):
        raise BusError(f"message {message.message_id} was not received from Service Bus")
    return message.handle


def _to_servicebus(message: OutgoingMessage) -> ServiceBusMessage:
    return ServiceBusMessage(
        message.body,
        message_id=message.message_id,
        content_type=message.content_type,
        application_properties={key: value for key, value in message.application_properties.items()},
    )


def _from_servicebus(message: ServiceBusReceivedMessage) -> ReceivedMessage:
    return ReceivedMessage(
        body=_body(message),
        message_id=str(message.message_id),
        application_properties=_properties(message.application_properties or {}),
        delivery_count=message.delivery_count or 0,
        sequence_number=message.sequence_number or 0,
        enqueued_time=message.enqueued_time_utc or datetime.now(UTC),
        locked_until=message.locked_until_utc,
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_description=message.dead_letter_error_description,
        handle=message,
    )


def _body(message: ServiceBusReceivedMessage) -> bytes:
    body = message.body
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(body)
    # Another producer's value or sequence body: hand over its JSON form so the consumer can reject it.
    if isinstance(body, bytes):
        return body
    return json.dumps(body, default=repr).encode()


def _properties(properties: Mapping[str | bytes, object]) -> dict[str, PropertyValue]:
    converted: dict[str, PropertyValue] = {}
    for key, value in properties.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in _DEAD_LETTER_PROPERTIES:
            continue
        if isinstance(value, bytes):
            converted[name] = value.decode(errors="replace")
        elif isinstance(value, str | int | float | bool):
            converted[name] = value
        else:
            converted[name] = str(value)
    return converted
