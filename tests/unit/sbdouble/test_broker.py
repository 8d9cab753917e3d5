"""The double's entity state machine, driven with explicit times."""

from __future__ import annotations

import pytest

from tests.sbdouble.broker import (
    MAX_DELIVERY_COUNT_EXCEEDED,
    Broker,
    LockLostError,
    QueueKey,
    StoredMessage,
)
from tests.sbdouble.config import parse_config
from tibridge.common.topology import INDICATORS_TOPIC, SCORED_TOPIC, emulator_config

SCORER = QueueKey(INDICATORS_TOPIC, "scorer")
SCORER_DEAD_LETTERS = QueueKey(INDICATORS_TOPIC, "scorer", dead_letter=True)
PUBLISHER = QueueKey(SCORED_TOPIC, "publisher")
LOCK = 60.0


def stored(message_id: str | None = "m1", **properties: object) -> StoredMessage:
    return StoredMessage(message_id, properties, {}, b"", b"")


@pytest.fixture
def broker() -> Broker:
    return Broker(parse_config(emulator_config()))


def test_leases_in_sequence_order_with_a_lock(broker: Broker) -> None:
    broker.publish(INDICATORS_TOPIC, stored("a"), now=100)
    broker.publish(INDICATORS_TOPIC, stored("b"), now=101)
    first, second = broker.lease(SCORER, now=102), broker.lease(SCORER, now=102)
    assert first is not None
    assert second is not None
    assert [first.entry.message.message_id, second.entry.message.message_id] == ["a", "b"]
    assert first.entry.sequence_number < second.entry.sequence_number
    assert first.locked_until == 102 + LOCK
    assert broker.lease(SCORER, now=102) is None
    assert broker.depth(SCORER) == 2


def test_rules_decide_the_fan_out(broker: Broker) -> None:
    assert broker.publish(SCORED_TOPIC, stored("p", verdict="publish"), now=0) == [PUBLISHER]
    assert broker.publish(SCORED_TOPIC, stored("d", verdict="drop"), now=0) == []
    assert broker.depth(PUBLISHER) == 1


def test_duplicates_are_dropped_within_the_window_only(broker: Broker) -> None:
    assert broker.publish(INDICATORS_TOPIC, stored("same"), now=0) == [SCORER]
    assert broker.publish(INDICATORS_TOPIC, stored("same"), now=20 * 60 - 1) == []
    assert broker.publish(INDICATORS_TOPIC, stored("same"), now=20 * 60) == [SCORER]
    assert broker.publish(INDICATORS_TOPIC, stored(None), now=0) == [SCORER]
    assert broker.publish(INDICATORS_TOPIC, stored(None), now=0) == [SCORER]


def test_abandon_and_lapsed_locks_count_a_delivery_release_does_not(broker: Broker) -> None:
    broker.publish(INDICATORS_TOPIC, stored(), now=0)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    broker.release(lease.token)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    assert lease.entry.delivery_count == 0
    broker.abandon(lease.token)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    assert lease.entry.delivery_count == 1
    assert broker.expire_locks(now=LOCK - 1) == set()
    assert broker.expire_locks(now=LOCK) == {SCORER}
    lease = broker.lease(SCORER, now=LOCK)
    assert lease is not None
    assert lease.entry.delivery_count == 2
    broker.complete(lease.token)
    with pytest.raises(LockLostError):
        broker.complete(lease.token)


def test_max_delivery_count_moves_the_message_to_the_dead_letter_queue(broker: Broker) -> None:
    broker.publish(INDICATORS_TOPIC, stored(), now=0)
    for _ in range(5):
        lease = broker.lease(SCORER, now=0)
        assert lease is not None
        destination = broker.abandon(lease.token)
    assert destination == SCORER_DEAD_LETTERS
    assert broker.depth(SCORER) == 0
    [dead] = broker.entries(SCORER_DEAD_LETTERS)
    assert (dead.dead_letter_reason, dead.delivery_count) == (MAX_DELIVERY_COUNT_EXCEEDED, 5)
    assert dead.application_properties["DeadLetterReason"] == MAX_DELIVERY_COUNT_EXCEEDED


def test_dead_letter_keeps_reason_and_description(broker: Broker) -> None:
    broker.publish(INDICATORS_TOPIC, stored(kind="x"), now=0)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    assert broker.dead_letter(lease.token, "Bad", "very bad") == SCORER_DEAD_LETTERS
    dead_lease = broker.lease(SCORER_DEAD_LETTERS, now=0)
    assert dead_lease is not None
    assert dead_lease.entry.application_properties == {
        "kind": "x",
        "DeadLetterReason": "Bad",
        "DeadLetterErrorDescription": "very bad",
    }
    with pytest.raises(LockLostError, match="dead-letter queue"):
        broker.dead_letter(dead_lease.token, "again", "")


def test_renew_extends_and_settled_or_lapsed_locks_are_lost(broker: Broker) -> None:
    broker.publish(INDICATORS_TOPIC, stored(), now=0)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    assert broker.renew(lease.token, now=30) == 30 + LOCK
    assert broker.expire_locks(now=LOCK) == set()
    broker.expire_locks(now=30 + LOCK)
    with pytest.raises(LockLostError):
        broker.renew(lease.token, now=30 + LOCK)


def test_peek_shows_available_and_locked_messages_without_locking(broker: Broker) -> None:
    for message_id in ("a", "b", "c"):
        broker.publish(INDICATORS_TOPIC, stored(message_id), now=0)
    assert broker.lease(SCORER, now=0) is not None
    peeked = broker.peek(SCORER, from_sequence_number=0, count=10)
    assert [entry.message.message_id for entry in peeked] == ["a", "b", "c"]
    assert [e.message.message_id for e in broker.peek(SCORER, peeked[1].sequence_number, 1)] == ["b"]
    assert broker.depth(SCORER) == 3


def test_hooks_change_lock_duration_and_max_delivery(broker: Broker) -> None:
    broker.set_lock_duration(INDICATORS_TOPIC, "scorer", 1.5)
    broker.set_max_delivery_count(INDICATORS_TOPIC, "scorer", 1)
    broker.publish(INDICATORS_TOPIC, stored(), now=0)
    lease = broker.lease(SCORER, now=0)
    assert lease is not None
    assert lease.locked_until == 1.5
    assert broker.expire_locks(now=1.5) == {SCORER_DEAD_LETTERS}
