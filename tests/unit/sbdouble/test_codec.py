"""Reading what the SDK sends and writing what it expects to receive, with the SDK's own codec as the judge."""

from __future__ import annotations

from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import BatchMessage, Message, Properties

from tests.sbdouble.broker import Entry
from tests.sbdouble.codec import encode_entry, read_transfer


def sdk_encoded(message: Message) -> bytes:
    return bytes(encode_payload(bytearray(), message))


def test_a_single_message_keeps_its_id_properties_and_body() -> None:
    payload = sdk_encoded(
        Message(data=[b'{"a": 1}'], properties=Properties(message_id="m1"), application_properties={"verdict": "drop"})
    )
    [message] = read_transfer(payload)
    assert message.message_id == "m1"
    assert message.application_properties == {"verdict": "drop"}


def test_a_batch_is_split_into_its_messages() -> None:
    inner = [
        sdk_encoded(Message(data=[b"one"], properties=Properties(message_id="b1"), application_properties={"n": 1})),
        sdk_encoded(Message(data=[b"two"], properties=Properties(message_id="b2"))),
    ]
    batch = sdk_encoded(BatchMessage(data=inner, properties=Properties(message_id="b1")))
    messages = read_transfer(batch)
    assert [(m.message_id, dict(m.application_properties)) for m in messages] == [("b1", {"n": 1}), ("b2", {})]


def test_a_data_body_that_is_not_a_message_is_not_a_batch() -> None:
    payload = sdk_encoded(Message(data=[b"\x00Sp not really"], properties=Properties(message_id="x")))
    assert [m.message_id for m in read_transfer(payload)] == ["x"]


def test_a_delivered_message_has_an_explicit_header_and_the_broker_annotations() -> None:
    [stored] = read_transfer(
        sdk_encoded(Message(data=[b"body"], properties=Properties(message_id="m"), application_properties={"k": "v"}))
    )
    entry = Entry(stored, sequence_number=7, enqueued_time=1_700_000_000.25, delivery_count=0)
    decoded = decode_payload(memoryview(encode_entry(entry, locked_until=1_700_000_060.5)))
    assert decoded.header is not None
    assert decoded.header.delivery_count == 0
    annotations = decoded.message_annotations or {}
    assert annotations[b"x-opt-sequence-number"] == 7
    assert annotations[b"x-opt-enqueued-time"] == 1_700_000_000_250
    assert annotations[b"x-opt-locked-until"] == 1_700_000_060_500
    assert decoded.application_properties == {b"k": b"v"}
    assert decoded.data == [b"body"]
    assert decoded.properties is not None
