"""The AMQP 1.0 side of the double: a proton reactor, in its own thread, speaking what azure-servicebus expects.

`ServiceBusDouble` starts and stops the reactor thread and offers test hooks (shorter locks, queue depths,
dead-letter contents, dropped connections). Hooks run inside the reactor thread, so the entity state is only
ever touched by that one thread.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from proton import (
    Array,
    Condition,
    Connection,
    Data,
    Delivery,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Sender,
    Terminus,
    int32,
    symbol,
    timestamp,
)
from proton.reactor import ApplicationEvent, Container, EventInjector

from tests.sbdouble.broker import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    Broker,
    Entry,
    LockLostError,
    QueueKey,
)
from tests.sbdouble.codec import DATA, encode_entry, read_transfer, split_sections
from tests.sbdouble.config import DEFAULT_CONFIG_PATH, NamespaceConfig, load_config

log = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 256 * 1024  # what a Standard namespace advertises; the SDK sizes its batches from it
# The SDK's batch size estimate leaves out the batch envelope's own properties (tens of bytes), so a full
# batch encodes slightly over the limit; the service takes it, and so does the double.
BATCH_ENVELOPE_ALLOWANCE = 1024
SENDER_CREDIT = 100
TICK_SECONDS = 0.05
STOP_TIMEOUT_SECONDS = 10.0
CONTAINER_ID = "servicebus-double"
CBS_NODE = "$cbs"
MANAGEMENT_SUFFIX = "/$management"
VENDOR = "com.microsoft"
LOCK_LOST = symbol(f"{VENDOR}:message-lock-lost")
NOT_FOUND = symbol("amqp:not-found")
NOT_IMPLEMENTED = symbol("amqp:not-implemented")
DECODE_ERROR = symbol("amqp:decode-error")
MESSAGE_SIZE_EXCEEDED = symbol("amqp:link:message-size-exceeded")

T = TypeVar("T")


def _error(condition: symbol, description: str) -> Condition:
    """An AMQP error as the service sends it: with an info map (the SDK indexes into it unchecked)."""
    return Condition(condition, description, {symbol(f"{VENDOR}:tracking-id"): str(uuid.uuid4())})


def _required(value: T | None) -> T:
    """Proton types every event attribute as optional; the events handled here always carry them."""
    if value is None:
        raise RuntimeError("a proton event arrived without the object its type implies")
    return value


@dataclass(frozen=True)
class InspectedMessage:
    """A snapshot of a queued message, for assertions in tests."""

    message_id: str | None
    body: bytes
    application_properties: dict[str, object]
    sequence_number: int
    delivery_count: int
    dead_letter_reason: str | None
    dead_letter_description: str | None


# -- link roles ---------------------------------------------------------------------------------------------


@dataclass
class _TopicIn:
    topic: str


@dataclass
class _QueueOut:
    key: QueueKey
    deliveries: dict[Delivery, uuid.UUID] = field(default_factory=dict)


@dataclass
class _RequestIn:
    """Requests to `$cbs` or to an entity's `$management` node (`key` is None for a topic's node)."""

    node: str
    key: QueueKey | None = None


@dataclass
class _ReplyOut:
    node: str
    pending: deque[bytes] = field(default_factory=deque)
    tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))


_Role = _TopicIn | _QueueOut | _RequestIn | _ReplyOut


def entity_path(address: str | None) -> str:
    """`amqps://host:port/indicators/Subscriptions/scorer` → `indicators/Subscriptions/scorer`."""
    if not address:
        return ""
    if "://" in address:
        address = address.split("://", 1)[1].partition("/")[2]
    return address.strip("/")


def parse_queue(path: str) -> QueueKey | None:
    parts = path.split("/")
    if len(parts) not in (3, 4) or parts[1].lower() != "subscriptions":
        return None
    if len(parts) == 4 and parts[3].lower() != "$deadletterqueue":
        return None
    return QueueKey(parts[0], parts[2], dead_letter=len(parts) == 4)


class _UnsupportedSettlement(Exception):
    pass


@dataclass(frozen=True)
class _Reply:
    status: int
    description: str
    body: dict[str, Any] | None = None
    condition: str | None = None


class _AmqpHandler(Handler):
    """Everything here runs on the reactor thread."""

    def __init__(self, broker: Broker, host: str, port: int, on_listening: Callable[[int], None]) -> None:
        super().__init__()
        self.broker = broker
        self.refuse_connections = False
        self.errors: list[BaseException] = []
        self._host = host
        self._port = port
        self._on_listening = on_listening
        self._roles: dict[Link, _Role] = {}
        self._consumers: dict[QueueKey, list[Link]] = {}
        self._incoming: dict[Delivery, bytearray] = {}
        self._connections: set[Connection] = set()
        self.transfers: dict[str, int] = {}
        self._acceptor: Any = None
        self._container: Any = None
        self._tick: Any = None
        self.injector = EventInjector()

    # -- reactor lifecycle -----------------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        container = self._container = event.container
        self._acceptor = container.listen(f"{self._host}:{self._port}")
        container.selectable(self.injector)
        self._tick = container.schedule(TICK_SECONDS, self)
        # proton offers no public accessor for the bound port (needed when asked for port 0)
        listening = socket.socket(fileno=os.dup(self._acceptor._selectable.fileno()))
        with listening:
            self._on_listening(int(listening.getsockname()[1]))

    def on_timer_task(self, event: Event) -> None:
        for key in self.broker.expire_locks(time.time()):
            self._pump_queue(key)
        self._tick = event.container.schedule(TICK_SECONDS, self)

    def on_sbdouble_call(self, event: ApplicationEvent) -> None:
        function, future = event.subject
        try:
            future.set_result(function())
        except Exception as error:  # handed back to the calling thread
            future.set_exception(error)

    def shut_down(self) -> None:
        """Closes everything so the reactor runs out of work and `run()` returns."""
        # The reactor's idle select otherwise waits its default ~3 s before noticing it has nothing left.
        self._container.timeout = TICK_SECONDS
        if self._tick is not None:
            self._tick.cancel()
        if self._acceptor is not None:
            self._acceptor.close()
        self.drop_connections()
        self.injector.close()

    def drop_connections(self) -> int:
        connections = list(self._connections)
        for connection in connections:
            transport = connection.transport
            if transport is not None:
                transport.close_tail()
                transport.close_head()
        return len(connections)

    def open_connections(self) -> int:
        return len(self._connections)

    # -- connections, sessions ---------------------------------------------------------------------------------

    def on_connection_bound(self, event: Event) -> None:
        if self.refuse_connections:
            transport = _required(event.transport)
            transport.close_tail()
            transport.close_head()
            return
        self._connections.add(_required(event.connection))

    def on_connection_remote_open(self, event: Event) -> None:
        connection = _required(event.connection)
        connection.container = CONTAINER_ID
        connection.open()

    def on_session_remote_open(self, event: Event) -> None:
        _required(event.session).open()

    def on_session_remote_close(self, event: Event) -> None:
        _required(event.session).close()

    def on_connection_remote_close(self, event: Event) -> None:
        _required(event.connection).close()

    def on_transport_closed(self, event: Event) -> None:
        connection = event.connection
        if connection is None:
            return
        self._connections.discard(connection)
        for link in [link for link in self._roles if link.connection == connection]:
            self._forget(link)

    # -- links -------------------------------------------------------------------------------------------------

    def on_link_remote_open(self, event: Event) -> None:
        link = _required(event.link)
        address = link.remote_target.address if link.is_receiver else link.remote_source.address
        path = entity_path(address)
        role = self._role_for(link, path)
        if role is None:
            # Refused as AMQP says: an attach without the terminus, then a detach with the error.
            link.source.type = Terminus.UNSPECIFIED
            link.target.type = Terminus.UNSPECIFIED
            link.open()
            link.condition = _error(NOT_FOUND, f"The messaging entity '{path}' could not be found.")
            link.close()
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        self._roles[link] = role
        if link.is_sender:
            link.snd_settle_mode = Link.SND_UNSETTLED
            link.rcv_settle_mode = link.remote_rcv_settle_mode
        else:
            link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        if link.is_receiver:
            link.flow(SENDER_CREDIT)
        if isinstance(role, _QueueOut):
            self._consumers.setdefault(role.key, []).append(link)

    def on_link_remote_close(self, event: Event) -> None:
        link = _required(event.link)
        self._forget(link)
        link.close()

    def on_link_flow(self, event: Event) -> None:
        link = _required(event.link)
        role = self._roles.get(link)
        if isinstance(role, _QueueOut):
            self._pump(link, role)
        elif isinstance(role, _ReplyOut):
            self._flush(link, role)
        if isinstance(link, Sender) and link.drain_mode:
            link.drained()

    def _role_for(self, link: Link, path: str) -> _Role | None:
        if path == CBS_NODE:
            return _RequestIn(CBS_NODE) if link.is_receiver else _ReplyOut(CBS_NODE)
        if path.endswith(MANAGEMENT_SUFFIX):
            entity = path.removesuffix(MANAGEMENT_SUFFIX)
            key = parse_queue(entity)
            exists = self.broker.has_topic(entity) if key is None else self.broker.has_queue(key)
            if not exists:
                return None
            return _RequestIn(path, key) if link.is_receiver else _ReplyOut(path)
        if link.is_receiver:
            return _TopicIn(path) if self.broker.has_topic(path) else None
        key = parse_queue(path)
        return _QueueOut(key) if key is not None and self.broker.has_queue(key) else None

    def _forget(self, link: Link) -> None:
        role = self._roles.pop(link, None)
        if isinstance(role, _QueueOut):
            # Unsettled deliveries keep their locks until they lapse, as on the service.
            consumers = self._consumers.get(role.key, [])
            if link in consumers:
                consumers.remove(link)

    # -- deliveries --------------------------------------------------------------------------------------------

    def on_delivery(self, event: Event) -> None:
        link, delivery = _required(event.link), _required(event.delivery)
        try:
            if link.is_receiver:
                self._on_transfer(link, delivery)
            else:
                self._on_disposition(link, delivery)
        except Exception as error:
            # Keep serving: a bug here must fail the test at teardown, not hang it.
            log.exception("the Service Bus double failed on a delivery")
            self.errors.append(error)

    def _on_transfer(self, link: Link, delivery: Delivery) -> None:
        buffer = self._incoming.setdefault(delivery, bytearray())
        chunk = link.recv(delivery.pending)
        if chunk:
            buffer.extend(chunk)
        if delivery.partial:
            return
        del self._incoming[delivery]
        link.advance()
        role = self._roles.get(link)
        condition: Condition | None = None
        if isinstance(role, _TopicIn):
            condition = self._publish(role.topic, bytes(buffer))
        elif isinstance(role, _RequestIn):
            self._request(link, role, bytes(buffer))
        if condition is None:
            delivery.update(Delivery.ACCEPTED)
        else:
            delivery.local.condition = condition
            delivery.update(Delivery.REJECTED)
        delivery.settle()
        if link.credit < SENDER_CREDIT // 2:
            link.flow(SENDER_CREDIT - link.credit)

    def _publish(self, topic: str, payload: bytes) -> Condition | None:
        self.transfers[topic] = self.transfers.get(topic, 0) + 1
        if len(payload) > MAX_MESSAGE_SIZE + BATCH_ENVELOPE_ALLOWANCE:
            return _error(MESSAGE_SIZE_EXCEEDED, f"the message is {len(payload)} bytes, over {MAX_MESSAGE_SIZE}")
        try:
            messages = read_transfer(payload)
        except ValueError as error:
            return _error(DECODE_ERROR, str(error))
        now = time.time()
        touched = {key for message in messages for key in self.broker.publish(topic, message, now)}
        for key in touched:
            self._pump_queue(key)
        return None

    def _on_disposition(self, link: Link, delivery: Delivery) -> None:
        role = self._roles.get(link)
        if isinstance(role, _ReplyOut) or not delivery.updated:
            return
        token = role.deliveries.pop(delivery, None) if isinstance(role, _QueueOut) else None
        if token is None:
            delivery.settle()
            return
        try:
            touched = self._settle(token, delivery)
        except LockLostError as error:
            self._refuse(delivery, _error(LOCK_LOST, str(error)))
        except _UnsupportedSettlement as error:
            self._refuse(delivery, _error(NOT_IMPLEMENTED, str(error)))
        else:
            # Rcv-settle-mode second: settle with the outcome applied, which the SDK compares with what it sent.
            if delivery.remote_state == Delivery.MODIFIED:
                delivery.local.failed = delivery.remote.failed
                delivery.local.undeliverable = delivery.remote.undeliverable
            delivery.update(delivery.remote_state)  # a rejected echo carries no error
            if touched is not None:
                self._pump_queue(touched)
        delivery.settle()

    def _settle(self, token: uuid.UUID, delivery: Delivery) -> QueueKey | None:
        """Applies the receiver's outcome; returns the queue that got a message back, if any."""
        state, remote = delivery.remote_state, delivery.remote
        if state == Delivery.ACCEPTED:
            self.broker.complete(token)
            return None
        if state == Delivery.RELEASED or (
            state == Delivery.MODIFIED and not remote.failed and not remote.undeliverable
        ):
            return self.broker.release(token)
        if state == Delivery.MODIFIED and not remote.undeliverable:
            return self.broker.abandon(token)
        if state == Delivery.REJECTED:
            info = remote.condition.info if remote.condition is not None else None
            details = {str(key): value for key, value in info.items()} if isinstance(info, dict) else {}
            reason, description = details.get(DEAD_LETTER_REASON), details.get(DEAD_LETTER_DESCRIPTION)
            return self.broker.dead_letter(token, _text(reason), _text(description))
        raise _UnsupportedSettlement(f"the Service Bus double cannot settle with {state} (defer)")

    @staticmethod
    def _refuse(delivery: Delivery, condition: Condition) -> None:
        delivery.local.condition = condition
        delivery.update(Delivery.REJECTED)

    def _pump_queue(self, key: QueueKey) -> None:
        for link in list(self._consumers.get(key, [])):
            role = self._roles.get(link)
            if isinstance(role, _QueueOut):
                self._pump(link, role)

    def _pump(self, link: Link, role: _QueueOut) -> None:
        if not link.state & Endpoint.LOCAL_ACTIVE:
            return
        now = time.time()
        while link.credit > 0:
            lease = self.broker.lease(role.key, now)
            if lease is None:
                return
            # The SDK's lock token is UUID(bytes_le=tag); proton takes bytes tags though it is typed str.
            delivery = link.delivery(lease.token.bytes_le)  # type: ignore[arg-type]
            link.send(encode_entry(lease.entry, lease.locked_until))
            link.advance()
            role.deliveries[delivery] = lease.token

    # -- $cbs and $management ------------------------------------------------------------------------------------

    def _request(self, link: Link, role: _RequestIn, payload: bytes) -> None:
        request = Message()
        request.decode(payload)
        reply = self._cbs(request) if role.node == CBS_NODE else self._management(role, request)
        properties: dict[str, object]
        if role.node == CBS_NODE:
            properties = {"status-code": int32(reply.status), "status-description": reply.description}
        else:
            properties = {"statusCode": int32(reply.status), "statusDescription": reply.description}
            if reply.condition is not None:
                properties["errorCondition"] = symbol(reply.condition)
        response = Message(correlation_id=request.id, properties=properties, body=reply.body)
        reply_node = CBS_NODE if role.node == CBS_NODE else entity_path(request.reply_to) or role.node
        self._send_reply(link.connection, reply_node, bytes(response.encode()))

    @staticmethod
    def _cbs(request: Message) -> _Reply:
        if _application_properties(request).get("operation") != "put-token":
            return _Reply(400, "the $cbs node only takes put-token")
        return _Reply(202, "Accepted")

    def _management(self, role: _RequestIn, request: Message) -> _Reply:
        operation = str(_application_properties(request).get("operation", ""))
        body = {str(key): value for key, value in request.body.items()} if isinstance(request.body, dict) else {}
        if role.key is None:
            return _Reply(501, f"{operation} is not supported on a topic by the Service Bus double")
        now = time.time()
        try:
            if operation == f"{VENDOR}:renew-lock":
                expirations = [self.broker.renew(token, now) for token in _tokens(body)]
                return _Reply(200, "OK", {"expirations": Array(0, Data.TIMESTAMP, *map(_timestamp, expirations))})
            if operation == f"{VENDOR}:peek-message":
                entries = self.broker.peek(
                    role.key, int(body.get("from-sequence-number", 0)), int(body.get("message-count", 1))
                )
                if not entries:
                    return _Reply(204, "No messages")
                return _Reply(200, "OK", {"messages": [{"message": encode_entry(entry, None)} for entry in entries]})
            if operation == f"{VENDOR}:update-disposition":
                return self._update_disposition(body)
        except LockLostError as error:
            return _Reply(410, str(error), condition=str(LOCK_LOST))
        return _Reply(501, f"{operation} is not supported by the Service Bus double", condition=str(NOT_IMPLEMENTED))

    def _update_disposition(self, body: dict[str, Any]) -> _Reply:
        status = str(body.get("disposition-status", ""))
        for token in _tokens(body):
            touched: QueueKey | None = None
            if status == "completed":
                self.broker.complete(token)
            elif status == "abandoned":
                touched = self.broker.abandon(token)
            elif status == "suspended":
                touched = self.broker.dead_letter(
                    token, _text(body.get("deadletter-reason")), _text(body.get("deadletter-description"))
                )
            else:
                return _Reply(501, f"disposition {status!r} is not supported by the Service Bus double")
            if touched is not None:
                self._pump_queue(touched)
        return _Reply(200, "OK", {})

    def _send_reply(self, connection: Connection, node: str, payload: bytes) -> None:
        for link, role in self._roles.items():
            if isinstance(role, _ReplyOut) and link.connection == connection and role.node == node:
                role.pending.append(payload)
                self._flush(link, role)
                return
        log.warning("no reply link for %s; the response is dropped", node)

    @staticmethod
    def _flush(link: Link, role: _ReplyOut) -> None:
        while role.pending and link.credit > 0:
            delivery = link.delivery(str(next(role.tags)))
            link.send(role.pending.popleft())
            link.advance()
            delivery.settle()


def _application_properties(message: Message) -> dict[str, Any]:
    properties: dict[Any, Any] = message.properties or {}
    return {str(key): value for key, value in properties.items()}


def _tokens(body: dict[str, Any]) -> list[uuid.UUID]:
    tokens = body.get("lock-tokens", [])
    values = tokens.elements if isinstance(tokens, Array) else tokens
    return [value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)) for value in values]


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _timestamp(epoch_seconds: float) -> timestamp:
    return timestamp(int(epoch_seconds * 1000))


def data_body(body_sections: bytes) -> bytes:
    """The bytes of a message's data sections."""
    return b"".join(
        section.value
        for section in split_sections(body_sections)
        if section.code == DATA and isinstance(section.value, bytes)
    )


class ServiceBusDouble:
    """A Service Bus namespace on 127.0.0.1 that the unmodified azure-servicebus SDK talks to.

    Use as a context manager, or `start()` / `stop()`. `connection_string` is an emulator connection string.
    """

    def __init__(self, config: NamespaceConfig | Path = DEFAULT_CONFIG_PATH, *, host: str = "127.0.0.1", port: int = 0):
        self.config = config if isinstance(config, NamespaceConfig) else load_config(config)
        self.host = host
        self._broker = Broker(self.config)
        self._port: int | None = None
        self._listening = threading.Event()
        self._handler = _AmqpHandler(self._broker, host, port, self._listening_on)
        self._container = Container(self._handler)
        self._thread = threading.Thread(target=self._run, name="servicebus-double", daemon=True)
        self._failure: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the Service Bus double is not listening; call start() first")
        return self._port

    @property
    def connection_string(self) -> str:
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName=RootManageSharedAccessKey;"
            "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
        )

    def start(self) -> Self:
        self._thread.start()
        while not self._listening.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"the Service Bus double did not start: {self._failure}") from self._failure
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._handler.shut_down)
        self._thread.join(STOP_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            raise RuntimeError("the Service Bus double's reactor thread did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def errors(self) -> list[BaseException]:
        """Internal errors the double logged while serving; a test fixture fails on any."""
        return list(self._handler.errors) + ([self._failure] if self._failure else [])

    # -- test hooks ------------------------------------------------------------------------------------------

    def set_lock_duration(self, topic: str, subscription: str, seconds: float) -> None:
        self._call(lambda: self._broker.set_lock_duration(topic, subscription, seconds))

    def set_max_delivery_count(self, topic: str, subscription: str, count: int) -> None:
        self._call(lambda: self._broker.set_max_delivery_count(topic, subscription, count))

    def depth(self, topic: str, subscription: str, *, dead_letter: bool = False) -> int:
        return self._call(lambda: self._broker.depth(QueueKey(topic, subscription, dead_letter)))

    def messages(self, topic: str, subscription: str, *, dead_letter: bool = False) -> list[InspectedMessage]:
        entries = self._call(lambda: self._broker.entries(QueueKey(topic, subscription, dead_letter)))
        return [_inspect(entry) for entry in entries]

    def dead_letters(self, topic: str, subscription: str) -> list[InspectedMessage]:
        return self.messages(topic, subscription, dead_letter=True)

    def transfers(self, topic: str) -> int:
        """How many transfers (single messages or batches) senders made to the topic."""
        return self._call(lambda: self._handler.transfers.get(topic, 0))

    def drop_connections(self) -> int:
        """Closes every client connection abruptly, as a network fault would; returns how many."""
        return self._call(self._handler.drop_connections)

    def refuse_connections(self, refuse: bool = True) -> None:
        """While on, new connections are closed as soon as they are accepted."""

        def switch() -> None:
            self._handler.refuse_connections = refuse

        self._call(switch)

    def open_connections(self) -> int:
        return self._call(self._handler.open_connections)

    # -- internals -------------------------------------------------------------------------------------------

    def _listening_on(self, port: int) -> None:
        self._port = port
        self._listening.set()

    def _run(self) -> None:
        try:
            self._container.run()
        except BaseException as error:
            log.exception("the Service Bus double's reactor failed")
            self._failure = error

    def _call(self, function: Callable[[], T]) -> T:
        """Runs `function` on the reactor thread and returns its result here."""
        if not self._thread.is_alive():
            raise RuntimeError("the Service Bus double is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._handler.injector.trigger(ApplicationEvent("sbdouble_call", subject=(function, future)))
        return future.result(timeout=STOP_TIMEOUT_SECONDS)


def _inspect(entry: Entry) -> InspectedMessage:
    return InspectedMessage(
        message_id=entry.message.message_id,
        body=data_body(entry.message.body_sections),
        application_properties=dict(entry.message.application_properties),
        sequence_number=entry.sequence_number,
        delivery_count=entry.delivery_count,
        dead_letter_reason=entry.dead_letter_reason,
        dead_letter_description=entry.dead_letter_description,
    )
