"""Message contracts: round trips, typed rejections of unreadable bodies, deterministic message ids."""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tests.fixtures.messages import collected, scored
from tibridge.common.contracts import (
    Classification,
    Envelope,
    HashAlgorithm,
    InactiveReason,
    IndicatorCollected,
    IndicatorScored,
    Observable,
    ObservableType,
    Reputation,
    ReputationRule,
    RuleSeverity,
    Text,
    Tlp,
    Unreadable,
    Verdict,
    application_properties,
    decode,
    encode,
    envelope_for,
)

PRODUCED_AT = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)


def full_indicator() -> IndicatorCollected:
    return IndicatorCollected(
        observable=Observable(type=ObservableType.FILE_HASH, value="a" * 64, hash_algorithm=HashAlgorithm.SHA256),
        indicator_id="indicator--5e2b9c1a",
        upstream_version="2026-11-01T10:00:00Z",
        source_system="Microsoft Defender Threat Intelligence",
        time_generated=datetime(2026, 11, 1, 10, 5, tzinfo=UTC),
        confidence=90,
        valid_from=datetime(2026, 11, 1, tzinfo=UTC),
        valid_until=datetime(2026, 12, 1, tzinfo=UTC),
        active=False,
        inactive_reason=InactiveReason.REVOKED,
        labels=("malware",),
        tags=("apt", "loader"),
        tlp=Tlp.AMBER,
        description="Loader seen in a phishing wave",
        threat_types=("malicious-activity",),
    )


def decoded(body: bytes) -> Envelope:
    result = decode(body)
    assert isinstance(result, Envelope), result
    return result


def unreadable(body: bytes) -> Unreadable:
    result = decode(body)
    assert isinstance(result, Unreadable), result
    return result


@pytest.mark.parametrize(
    "payload",
    [
        full_indicator(),
        collected(7),
        scored(7, Verdict.DROP),
        IndicatorScored(
            indicator=collected(8),
            reputation=Reputation(
                score=87,
                classification=Classification.MALICIOUS,
                rules=(ReputationRule(name="C2", description="Command and control", severity=RuleSeverity.HIGH),),
            ),
            verdict=Verdict.PUBLISH,
            reason="score 87 >= 70",
        ),
    ],
    ids=["collected-every-field", "collected-minimal", "scored-without-reputation", "scored-with-reputation"],
)
def test_an_envelope_survives_encode_and_decode(payload: IndicatorCollected | IndicatorScored) -> None:
    envelope = envelope_for(payload, produced_at=PRODUCED_AT, traceparent=f"00-{'1' * 32}-{'2' * 16}-01")
    assert decoded(encode(envelope)) == envelope


def test_application_properties_let_rules_filter_without_the_body() -> None:
    traceparent = f"00-{'1' * 32}-{'2' * 16}-01"
    envelope = envelope_for(scored(3, Verdict.EXPIRE), traceparent=traceparent)
    assert application_properties(envelope) == {
        "type": "indicator.scored",
        "schema_version": "1.0",
        "observable_type": "ipv4",
        "verdict": "expire",
        "traceparent": traceparent,
    }


def test_a_newer_minor_version_is_read() -> None:
    raw = json.loads(encode(envelope_for(collected(1))))
    raw["schema_version"] = "1.7"
    assert decoded(json.dumps(raw).encode()).schema_version == "1.7"


@pytest.mark.parametrize("version", ["2.0", "0.9", "x.1", ""])
def test_an_unknown_major_version_is_a_typed_rejection(version: str) -> None:
    raw = json.loads(encode(envelope_for(collected(1))))
    raw["schema_version"] = version
    rejection = unreadable(json.dumps(raw).encode())
    assert rejection.reason == "UnsupportedSchemaVersion"
    assert repr(version) in rejection.description


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\xfa", "not UTF-8"),
        (b"[]", "body"),
        (b'{"schema_version": "1.0"}', "message_id"),
        (b"[" * 100_000, "RecursionError"),
        (b"9" * 5000, "ValueError"),
    ],
    ids=["empty", "not-utf8", "not-an-object", "missing-fields", "too-deep", "huge-number"],
)
def test_an_invalid_body_is_a_typed_rejection(body: bytes, says: str) -> None:
    rejection = unreadable(body)
    assert rejection.reason == "InvalidBody"
    assert says in rejection.description


def test_a_rejection_never_quotes_the_offending_values() -> None:
    raw = json.loads(encode(envelope_for(collected(1))))
    raw["payload"]["confidence"] = "secret-looking-value"
    rejection = unreadable(json.dumps(raw).encode())
    assert "payload.indicator.collected.confidence" in rejection.description
    assert "secret-looking-value" not in rejection.description


@given(st.binary(max_size=512))
def test_decoding_any_bytes_never_raises(body: bytes) -> None:
    assert isinstance(decode(body), Envelope | Unreadable)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20), st.lists, max_leaves=20))
def test_decoding_any_json_never_raises(value: object) -> None:
    assert isinstance(decode(json.dumps({"schema_version": "1.0", "payload": value}).encode()), Unreadable)


def test_the_message_id_is_deterministic_per_indicator_revision() -> None:
    first = envelope_for(collected(1), produced_at=PRODUCED_AT)
    again = envelope_for(collected(1), produced_at=datetime(2027, 1, 1, tzinfo=UTC))
    assert first.message_id == again.message_id
    assert envelope_for(collected(1, upstream_version="v2")).message_id != first.message_id
    assert envelope_for(collected(2)).message_id != first.message_id


def test_a_scored_message_keeps_the_id_of_the_indicator_it_scores() -> None:
    assert envelope_for(scored(4)).message_id == envelope_for(collected(4)).message_id


def test_only_file_hashes_carry_a_hash_algorithm() -> None:
    with pytest.raises(ValidationError, match="hash_algorithm"):
        Observable(type=ObservableType.FILE_HASH, value="a" * 64)
    with pytest.raises(ValidationError, match="hash_algorithm"):
        Observable(type=ObservableType.DOMAIN, value="example.net", hash_algorithm=HashAlgorithm.MD5)


def test_an_inactive_indicator_says_why() -> None:
    with pytest.raises(ValidationError, match="inactive_reason"):
        IndicatorCollected.model_validate({**collected(1).model_dump(), "active": False})


def _unchecked_text(annotation: Any, metadata: Sequence[Any] = (), where: str = "") -> list[str]:
    """Where inside `annotation` text is held without `Text`'s check."""
    if annotation is str:
        return [] if any(item in typing.get_args(Text)[1:] for item in metadata) else [where]
    if typing.get_origin(annotation) is typing.Annotated:
        base, *inner = typing.get_args(annotation)
        return _unchecked_text(base, [*metadata, *inner], where)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [
            found
            for name, field in annotation.model_fields.items()
            for found in _unchecked_text(field.annotation, field.metadata, f"{annotation.__name__}.{name}")
        ]
    return [found for argument in typing.get_args(annotation) for found in _unchecked_text(argument, (), where)]


def test_every_text_field_of_a_message_is_sendable_text() -> None:
    """A plain `str` field would let a lone surrogate through validation and fail the message's encoding later."""
    assert _unchecked_text(Envelope) == []


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (IndicatorCollected, "description", "broken \ud800 text"),
        (IndicatorCollected, "tags", ["broken \ud800 text"]),
        (IndicatorScored, "reason", "broken \ud800 text"),
    ],
)
def test_a_lone_surrogate_becomes_a_replacement_character(model: type[BaseModel], field: str, value: Any) -> None:
    base = collected(1) if model is IndicatorCollected else scored(1, Verdict.DROP)
    fixed = model.model_validate({**base.model_dump(), field: value})
    assert "broken \ufffd text" in str(getattr(fixed, field))
    assert decoded(encode(envelope_for(fixed))).payload == fixed  # type: ignore[arg-type]
