"""The message contracts: the only place where a message shape is defined.

Every message travels as an `Envelope` (JSON body) whose payload is one of the message types below. The
envelope's `message_id` is deterministic, so the topics' duplicate detection drops re-sends, and the
Service Bus application properties derived here let subscription rules filter without parsing bodies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

SCHEMA_VERSION = "1.0"
SUPPORTED_MAJOR_VERSION = 1


class ObservableType(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    FILE_HASH = "file_hash"
    EMAIL = "email"


SCORABLE_TYPES = frozenset({ObservableType.IPV4, ObservableType.IPV6, ObservableType.DOMAIN})


class HashAlgorithm(StrEnum):
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def hex_length(self) -> int:
        """Hex digits of a digest of this kind."""
        return _HEX_LENGTHS[self]


_HEX_LENGTHS = {HashAlgorithm.MD5: 32, HashAlgorithm.SHA1: 40, HashAlgorithm.SHA256: 64, HashAlgorithm.SHA512: 128}


class Tlp(StrEnum):
    """TLP 2.0 levels (TLP 1.0's `white` is `clear`); how ThreatStream spells them is the publisher's setting."""

    CLEAR = "clear"
    GREEN = "green"
    AMBER = "amber"
    AMBER_STRICT = "amber+strict"
    RED = "red"


class Classification(StrEnum):
    """MDTI's host reputation classification (not ThreatStream's `classification` field)."""

    UNKNOWN = "unknown"
    NEUTRAL = "neutral"
    SUSPICIOUS = "suspicious"
    MALICIOUS = "malicious"
    UNKNOWN_FUTURE_VALUE = "unknownFutureValue"


class RuleSeverity(StrEnum):
    UNKNOWN = "unknown"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    # Graph documents it for evolvable enums: a value newer than this reader must never fail a lookup.
    UNKNOWN_FUTURE_VALUE = "unknownFutureValue"


class Verdict(StrEnum):
    PUBLISH = "publish"
    DROP = "drop"
    EXPIRE = "expire"


class RejectionReason(StrEnum):
    """Why the collector refused a row; never sent on, always counted and logged."""

    INVALID_VALUE = "invalid_value"
    NON_GLOBAL_IP = "non_global_ip"
    UNSUPPORTED_TYPE = "unsupported_type"
    UNPARSED_PATTERN = "unparsed_pattern"


class InactiveReason(StrEnum):
    """Why the collector flagged an indicator inactive; the scorer turns it into `expire`."""

    REVOKED = "revoked"
    DELETED = "deleted"
    INACTIVE = "inactive"
    EXPIRED = "expired"


class DropReason(StrEnum):
    BELOW_THRESHOLD = "below_threshold"
    NO_REPUTATION = "no_reputation"
    UNSCORABLE_TYPE = "unscorable_type"
    CLASSIFICATION_NOT_ALLOWED = "classification_not_allowed"


def _sendable_text(text: str) -> str:
    """Whatever validates can be sent: text JSON in UTF-8 cannot carry (a lone UTF-16 surrogate, as a JSON body's
    `\\ud800` escape decodes to) is replaced by U+FFFD instead of failing the encoding of the whole message."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# Every text field of a message is `Text` (tests/unit/common/test_contracts.py holds them to it): a check per value
# where it is validated, cheaper than a validator over every field or every model.
Text = Annotated[str, AfterValidator(_sendable_text)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Observable(_Model):
    type: ObservableType
    value: Annotated[Text, Field(min_length=1, max_length=8192)]
    hash_algorithm: HashAlgorithm | None = None

    @model_validator(mode="after")
    def _algorithm_only_for_hashes(self) -> Observable:
        if (self.type is ObservableType.FILE_HASH) != (self.hash_algorithm is not None):
            raise ValueError("hash_algorithm is required for file hashes and only for them")
        return self

    @property
    def key(self) -> str:
        """A stable identity for caches and dedup: type, algorithm and canonical value."""
        kind = f"{self.type}:{self.hash_algorithm}" if self.hash_algorithm else str(self.type)
        return f"{kind}:{self.value}"

    @property
    def scorable(self) -> bool:
        return self.type in SCORABLE_TYPES


class IndicatorCollected(_Model):
    kind: Literal["indicator.collected"] = "indicator.collected"
    observable: Observable
    indicator_id: Annotated[Text, Field(min_length=1)]
    # What distinguishes one upstream revision of the indicator from another (e.g. its Modified time).
    upstream_version: Annotated[Text, Field(min_length=1)]
    source_system: Text
    time_generated: datetime
    confidence: Annotated[int, Field(ge=0, le=100)] | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    active: bool = True
    inactive_reason: InactiveReason | None = None
    labels: tuple[Text, ...] = ()
    tags: tuple[Text, ...] = ()
    tlp: Tlp | None = None
    description: Text | None = None
    threat_types: tuple[Text, ...] = ()

    @model_validator(mode="after")
    def _inactive_needs_reason(self) -> IndicatorCollected:
        if self.active == (self.inactive_reason is not None):
            raise ValueError("inactive_reason is required exactly when active is false")
        return self


class ReputationRule(_Model):
    name: Text
    description: Text = ""
    severity: RuleSeverity = RuleSeverity.UNKNOWN
    related_details_url: Text | None = None


class Reputation(_Model):
    score: Annotated[int, Field(ge=0, le=100)]
    classification: Classification
    rules: tuple[ReputationRule, ...] = ()


class IndicatorScored(_Model):
    kind: Literal["indicator.scored"] = "indicator.scored"
    indicator: IndicatorCollected
    reputation: Reputation | None = None
    verdict: Verdict
    reason: Text

    @property
    def observable(self) -> Observable:
        return self.indicator.observable


Payload = Annotated[IndicatorCollected | IndicatorScored, Field(discriminator="kind")]


class Envelope(_Model):
    schema_version: Text = SCHEMA_VERSION
    message_id: Text
    produced_at: datetime
    traceparent: Text | None = None
    tracestate: Text | None = None
    # Serialised by the payload's own type: pydantic would otherwise try the union's members one by one.
    payload: SerializeAsAny[Payload]


def message_id_for(observable: Observable, upstream_version: str) -> str:
    """The deterministic id: the same indicator revision always gets the same id on every topic."""
    material = "\x1f".join((observable.key, upstream_version))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def envelope_for(
    payload: IndicatorCollected | IndicatorScored,
    *,
    produced_at: datetime | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> Envelope:
    indicator = payload if isinstance(payload, IndicatorCollected) else payload.indicator
    return Envelope(
        message_id=message_id_for(indicator.observable, f"{indicator.indicator_id}@{indicator.upstream_version}"),
        produced_at=produced_at or datetime.now(UTC),
        traceparent=traceparent,
        tracestate=tracestate,
        payload=payload,
    )


def application_properties(envelope: Envelope) -> dict[str, str]:
    """What subscription rules and operators see without parsing the body."""
    payload = envelope.payload
    properties = {
        "type": payload.kind,
        "schema_version": envelope.schema_version,
        "observable_type": str(payload.observable.type),
    }
    if isinstance(payload, IndicatorScored):
        properties["verdict"] = str(payload.verdict)
    if envelope.traceparent:
        properties["traceparent"] = envelope.traceparent
    return properties


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json(exclude_none=True).encode("utf-8")


@dataclass(frozen=True)
class Unreadable:
    """A body that cannot be read: dead-letter it with this reason; never crash, never drop silently."""

    reason: Literal["UnsupportedSchemaVersion", "InvalidBody"]
    description: str


_MAX_DESCRIPTION = 1024


def decode(body: bytes) -> Envelope | Unreadable:
    # The common case in one step (pydantic-core parses and validates at once); any doubt takes the careful path.
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError:
        return _decode_carefully(body)
    if not _major_supported(envelope.schema_version):
        return _unsupported(envelope.schema_version)
    return envelope


def _decode_carefully(body: bytes) -> Envelope | Unreadable:
    """Which reason a body is unreadable for, in order: not JSON, a major version we do not read, not an envelope;
    and what Python's JSON reader accepts beyond pydantic-core's (a lone surrogate's escape) is still read."""
    try:
        raw = json.loads(body)
    except json.JSONDecodeError as error:
        return Unreadable("InvalidBody", f"body is not JSON: {error.msg} at position {error.pos}")
    except UnicodeDecodeError as error:
        return Unreadable("InvalidBody", f"body is not UTF-8: invalid byte at position {error.start}")
    except (ValueError, RecursionError) as error:
        # Over-long integers and over-deep nesting: the parser gives up, the consumer must not.
        return Unreadable("InvalidBody", f"body is not readable JSON: {type(error).__name__}")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if isinstance(version, str) and not _major_supported(version):
        return _unsupported(version)
    try:
        return Envelope.model_validate(raw)
    except ValidationError as error:
        return Unreadable("InvalidBody", _summarise(error))


def _unsupported(version: str) -> Unreadable:
    return Unreadable(
        "UnsupportedSchemaVersion",
        f"schema_version {version[:32]!r} is not supported; this reader handles major {SUPPORTED_MAJOR_VERSION}",
    )


def _major_supported(version: str) -> bool:
    major, _, _ = version.partition(".")
    # ASCII digits only ("²".isdigit() holds, int("²") raises), and few of them (int() refuses 4,300 digits).
    return major.isascii() and major.isdigit() and len(major) <= 9 and int(major) == SUPPORTED_MAJOR_VERSION


# Validation messages that quote the input; described by their type instead.
_QUOTING_ERRORS = {"union_tag_invalid": "the payload's kind is not one of indicator.collected, indicator.scored"}


def _summarise(error: ValidationError) -> str:
    # Locations and messages only: the offending input values stay out of dead-letter descriptions.
    parts = [
        f"{'.'.join(str(p) for p in item['loc']) or 'body'}: {_QUOTING_ERRORS.get(item['type'], item['msg'])}"
        for item in error.errors(include_input=False)
    ]
    return "; ".join(parts)[:_MAX_DESCRIPTION]
