"""Issue 13.5: property tests of the message contracts' decoding — no body can make `decode` raise, every message
that validates can be sent, and whatever is sent decodes to itself.

`decode` is the first thing every consumer does with every message, so whatever bytes arrive it must answer an
`Envelope` or an `Unreadable` (with one of its two reasons and a bounded description that never repeats the
body's values); a message model that validates must encode, and decode back equal. Examples per property:
300 in `make test`, 5,000 in `make reliability`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.sizes import current_size
from tibridge.common.contracts import (
    SCHEMA_VERSION,
    Classification,
    Envelope,
    HashAlgorithm,
    IndicatorCollected,
    IndicatorScored,
    Observable,
    ObservableType,
    Reputation,
    ReputationRule,
    RuleSeverity,
    Tlp,
    Unreadable,
    Verdict,
    decode,
    encode,
    envelope_for,
)

EXAMPLES = settings(
    max_examples=current_size().decode_examples,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MARKER = "Q7MARKERQ7"  # planted in bodies: a description must never repeat what the body said
REASONS = {"InvalidBody", "UnsupportedSchemaVersion"}
MAX_DESCRIPTION = 1024

# Any text at all, lone surrogates and controls included.
texts = st.text(st.characters(codec=None), max_size=40)
# What a message may carry: every text but lone surrogates, which pydantic refuses in any str field (so no
# message holding one validates, and the collector rejects such rows before).
model_chars = st.characters(codec=None, exclude_categories=("Cs",))
model_texts = st.text(model_chars, max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=25,
)


def assert_answer(body: bytes) -> Envelope | Unreadable:
    decoded = decode(body)
    assert isinstance(decoded, Envelope | Unreadable)
    if isinstance(decoded, Unreadable):
        assert decoded.reason in REASONS
        assert 0 < len(decoded.description) <= MAX_DESCRIPTION
        assert MARKER not in decoded.description
    return decoded


@EXAMPLES
@given(st.binary(max_size=400))
def test_no_bytes_make_decode_raise(body: bytes) -> None:
    assert_answer(body)


@EXAMPLES
@given(json_values)
def test_no_json_value_makes_decode_raise(value: Any) -> None:
    assert_answer(json.dumps(value).encode())


def envelope_like(payload: Any, version: Any) -> dict[str, Any]:
    return {
        "schema_version": version,
        "message_id": MARKER,
        "produced_at": "2026-11-01T00:00:00Z",
        "payload": payload,
    }


@EXAMPLES
@given(
    st.dictionaries(
        st.sampled_from(["kind", "observable", "indicator_id", "upstream_version", "source_system", "time_generated"])
        | texts,
        json_values | st.just(MARKER),
        max_size=8,
    ),
    st.one_of(st.just(SCHEMA_VERSION), texts, st.integers(), st.none(), st.text("0123456789²³١٢.", max_size=12)),
)
def test_envelopes_with_wrong_payloads_and_versions_are_answered_as_unreadable(
    payload: dict[str, Any], version: Any
) -> None:
    body = json.dumps(envelope_like({**payload, "note": MARKER}, version)).encode()
    assert isinstance(assert_answer(body), Unreadable)


@EXAMPLES
@given(st.integers(min_value=1, max_value=10_000), st.sampled_from(["[", "{", '{"a":', "[[{"]))
def test_deep_nesting_and_huge_numbers_are_unreadable_not_fatal(depth: int, opener: str) -> None:
    assert_answer((opener * depth).encode())
    assert_answer(b'{"schema_version": "' + b"9" * depth + b'.0"}')
    assert_answer(b'{"n": ' + b"9" * depth + b"}")


observables = st.one_of(
    st.builds(
        Observable,
        type=st.sampled_from([t for t in ObservableType if t is not ObservableType.FILE_HASH]),
        value=st.text(model_chars, min_size=1, max_size=60),
    ),
    st.builds(
        Observable,
        type=st.just(ObservableType.FILE_HASH),
        value=st.text("0123456789abcdef", min_size=32, max_size=32),
        hash_algorithm=st.sampled_from(HashAlgorithm),
    ),
)
moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


@st.composite
def collected(draw: st.DrawFn) -> IndicatorCollected:
    active = draw(st.booleans())
    return IndicatorCollected(
        observable=draw(observables),
        indicator_id=draw(st.text(model_chars, min_size=1, max_size=40)),
        upstream_version=draw(st.text(model_chars, min_size=1, max_size=30)),
        source_system=draw(model_texts),
        time_generated=draw(moments),
        confidence=draw(st.none() | st.integers(0, 100)),
        valid_from=draw(st.none() | moments),
        valid_until=draw(st.none() | moments),
        active=active,
        inactive_reason=None if active else "revoked",
        labels=tuple(draw(st.lists(model_texts, max_size=3))),
        tags=tuple(draw(st.lists(model_texts, max_size=3))),
        tlp=draw(st.none() | st.sampled_from(Tlp)),
        description=draw(st.none() | model_texts),
        threat_types=tuple(draw(st.lists(model_texts, max_size=3))),
    )


reputations = st.builds(
    Reputation,
    score=st.integers(0, 100),
    classification=st.sampled_from(Classification),
    rules=st.lists(
        st.builds(ReputationRule, name=model_texts, description=model_texts, severity=st.sampled_from(RuleSeverity)),
        max_size=3,
    ).map(tuple),
)
scored = st.builds(
    IndicatorScored,
    indicator=collected(),
    reputation=st.none() | reputations,
    verdict=st.sampled_from(Verdict),
    reason=model_texts,
)


@EXAMPLES
@given(collected() | scored)
def test_every_message_that_validates_is_sent_and_decodes_to_itself(
    payload: IndicatorCollected | IndicatorScored,
) -> None:
    envelope = envelope_for(payload, produced_at=datetime(2026, 11, 1, tzinfo=UTC))
    decoded = assert_answer(encode(envelope))
    assert decoded == envelope
