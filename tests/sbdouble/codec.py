"""AMQP 1.0 message sections, read and written with proton's `Data` codec.

The double keeps what a sender wrote (properties, body) as encoded bytes and writes the broker's parts
itself: an explicit header (proton's `Message` omits a header whose fields are all defaults, and the SDK
reads `delivery_count` from it) and the `x-opt-*` message annotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proton import Data, DataException, Described, symbol, timestamp, ubyte, uint, ulong

from tests.sbdouble.broker import Entry, StoredMessage

HEADER = 0x70
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
FOOTER = 0x78
_FIRST_SECTION, _LAST_SECTION = 0x70, 0x78
_FIRST_BODY_SECTION = 0x75
DEFAULT_PRIORITY = 4

SEQUENCE_NUMBER = symbol("x-opt-sequence-number")
ENQUEUED_TIME = symbol("x-opt-enqueued-time")
LOCKED_UNTIL = symbol("x-opt-locked-until")


@dataclass(frozen=True)
class Section:
    code: int
    value: object
    encoded: bytes


def split_sections(payload: bytes) -> list[Section]:
    """The sections of an encoded message; raises `ValueError` when `payload` is not one."""
    sections: list[Section] = []
    data = Data()
    offset = 0
    while offset < len(payload):
        data.clear()
        try:
            consumed = data.decode(payload[offset:])
            value = data.get_object()
        except DataException as error:
            raise ValueError(f"not an AMQP message: {error}") from None
        if not (isinstance(value, Described) and isinstance(value.descriptor, int)):
            raise ValueError("not an AMQP message: a section without a numeric descriptor")
        code = int(value.descriptor)
        if not _FIRST_SECTION <= code <= _LAST_SECTION:
            raise ValueError(f"not an AMQP message: unknown section {code:#x}")
        sections.append(Section(code, _owned(value.value), payload[offset : offset + consumed]))
        offset += consumed
    if not sections:
        raise ValueError("not an AMQP message: it is empty")
    return sections


def read_transfer(payload: bytes) -> list[StoredMessage]:
    """The messages in one transfer: one, or every message of a batch (format 0x80013700).

    Proton does not expose a transfer's message format, so a batch is recognised by its shape: a body of
    data sections that are each a complete encoded message.
    """
    sections = split_sections(payload)
    inner = _batched_messages(sections)
    return [_stored(message) for message in inner] if inner is not None else [_stored(sections)]


def encode_entry(entry: Entry, locked_until: float | None) -> bytes:
    """The message as a receiver gets it: the broker's header and annotations around the sender's sections."""
    message = entry.message
    annotations: dict[Any, Any] = dict(message.annotations)
    annotations[SEQUENCE_NUMBER] = entry.sequence_number
    annotations[ENQUEUED_TIME] = _timestamp(entry.enqueued_time)
    if locked_until is not None:
        annotations[LOCKED_UNTIL] = _timestamp(locked_until)
    header: list[Any] = [False, ubyte(DEFAULT_PRIORITY), None, False, uint(entry.delivery_count)]
    application_properties: dict[Any, Any] = entry.application_properties
    return b"".join(
        (
            _encode(Described(ulong(HEADER), header)),
            _encode(Described(ulong(MESSAGE_ANNOTATIONS), annotations)),
            message.properties_section,
            _encode(Described(ulong(APPLICATION_PROPERTIES), application_properties)),
            message.body_sections,
        )
    )


def _batched_messages(sections: list[Section]) -> list[list[Section]] | None:
    body = [section for section in sections if section.code >= _FIRST_BODY_SECTION and section.code != FOOTER]
    if not body or any(section.code != DATA for section in body):
        return None
    inner: list[list[Section]] = []
    for section in body:
        if not isinstance(section.value, bytes):
            return None
        try:
            inner.append(split_sections(section.value))
        except ValueError:
            return None
    return inner


def _owned(value: object) -> object:
    """Copies binary values out of the codec's buffer, which the next decode reuses."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, list):
        return [_owned(item) for item in value]
    if isinstance(value, dict):
        return {key: _owned(item) for key, item in value.items()}
    return value


def _stored(sections: list[Section]) -> StoredMessage:
    by_code = {section.code: section for section in sections}
    properties = by_code.get(PROPERTIES)
    message_id = properties.value[0] if properties is not None and isinstance(properties.value, list) else None
    application_properties = by_code.get(APPLICATION_PROPERTIES)
    annotations = by_code.get(MESSAGE_ANNOTATIONS)
    return StoredMessage(
        message_id=None if message_id is None else str(message_id),
        application_properties={str(key): value for key, value in _mapping(application_properties).items()},
        annotations=_mapping(annotations),
        properties_section=properties.encoded if properties is not None else b"",
        body_sections=b"".join(section.encoded for section in sections if section.code >= _FIRST_BODY_SECTION),
    )


def _mapping(section: Section | None) -> dict[object, object]:
    if section is None or not isinstance(section.value, Mapping):
        return {}
    return dict(section.value)


def _timestamp(epoch_seconds: float) -> timestamp:
    return timestamp(int(epoch_seconds * 1000))


def _encode(value: Any) -> bytes:
    data = Data()
    data.put_object(value)
    return bytes(data.encode())
