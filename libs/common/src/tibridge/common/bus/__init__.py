"""The bus port and its adapters (`memory`, `servicebus`)."""

from tibridge.common.bus.port import (
    Bus,
    BusError,
    BusUnavailable,
    EntityNotFound,
    LockLost,
    OutgoingMessage,
    PropertyValue,
    ReceivedMessage,
    Receiver,
)

__all__ = [
    "Bus",
    "BusError",
    "BusUnavailable",
    "EntityNotFound",
    "LockLost",
    "OutgoingMessage",
    "PropertyValue",
    "ReceivedMessage",
    "Receiver",
]
