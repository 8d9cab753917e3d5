"""A Log Analytics row → an `IndicatorCollected`, or the reason it is refused: pure functions.

Only the observable decides a rejection; anything else that is missing or malformed (dynamic columns that
are not JSON, odd confidence values) just leaves the optional fields empty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tibridge.collector.kql import IndicatorTable
from tibridge.collector.normalise import (
    KeyKind,
    Normalised,
    hash_algorithm_named,
    normalise,
    normalise_keyed,
    normalise_pattern,
)
from tibridge.common.contracts import InactiveReason, IndicatorCollected, ObservableType, RejectionReason, Tlp

Row = Mapping[str, Any]

# The standard STIX 2.1 TLP marking definitions.
TLP_MARKINGS: Mapping[str, Tlp] = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": Tlp.CLEAR,
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": Tlp.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": Tlp.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": Tlp.RED,
}
_IP = KeyKind(None)
# Legacy table: the columns that may hold the observable, most specific first.
_LEGACY_OBSERVABLE_COLUMNS: tuple[tuple[str, KeyKind], ...] = (
    ("Url", KeyKind(ObservableType.URL)),
    ("EmailSenderAddress", KeyKind(ObservableType.EMAIL)),
    ("DomainName", KeyKind(ObservableType.DOMAIN)),
    ("NetworkIP", _IP),
    ("NetworkSourceIP", _IP),
    ("NetworkDestinationIP", _IP),
)
_MISSING_ID = "<no id>"
_INVALID = RejectionReason.INVALID_VALUE


@dataclass(frozen=True)
class RowRejected:
    indicator_id: str
    reason: RejectionReason


@dataclass(frozen=True)
class RowReader:
    """Reads rows of one table; `now` decides whether a `ValidUntil` has passed."""

    table: IndicatorTable
    reject_non_global: bool

    def read(self, row: Row, now: datetime) -> IndicatorCollected | RowRejected:
        if self.table is IndicatorTable.NEW:
            return _read_new(row, now, self.reject_non_global)
        return _read_legacy(row, now, self.reject_non_global)


def _read_new(row: Row, now: datetime, reject_non_global: bool) -> IndicatorCollected | RowRejected:
    indicator_id = _text(row.get("Id")) or _MISSING_ID
    key = _text(row.get("ObservableKey"))
    if key:
        observable = normalise_keyed(key, _text(row.get("ObservableValue")), reject_non_global=reject_non_global)
    else:
        observable = normalise_pattern(_text(row.get("Pattern")), reject_non_global=reject_non_global)
    time_generated = _datetime(row.get("TimeGenerated"))
    if isinstance(observable, RejectionReason) or time_generated is None or indicator_id == _MISSING_ID:
        return RowRejected(indicator_id, observable if isinstance(observable, RejectionReason) else _INVALID)
    data = _mapping(row.get("Data"))
    additional = _mapping(row.get("AdditionalFields"))
    valid_until = _datetime(row.get("ValidUntil"))
    inactive = _inactive_reason(
        revoked=_flag(row.get("Revoked"), default=False),
        deleted=_flag(row.get("IsDeleted"), default=False),
        active=_flag(row.get("IsActive"), default=True),
        valid_until=valid_until,
        now=now,
    )
    modified = _datetime(row.get("Modified"))
    return IndicatorCollected(
        observable=observable,
        indicator_id=indicator_id,
        upstream_version=_version(modified or time_generated),
        source_system=_text(row.get("SourceSystem")),
        time_generated=time_generated,
        confidence=_confidence(row.get("Confidence")),
        valid_from=_datetime(row.get("ValidFrom")),
        valid_until=valid_until,
        active=inactive is None,
        inactive_reason=inactive,
        labels=_strings(data.get("labels")),
        tags=_strings(_dynamic(row.get("Tags"))),
        tlp=_tlp_level(additional.get("TLPLevel")) or _tlp_marking(data.get("object_marking_refs")),
        description=_text(data.get("description")) or None,
        threat_types=_strings(data.get("indicator_types")),
    )


def _read_legacy(row: Row, now: datetime, reject_non_global: bool) -> IndicatorCollected | RowRejected:
    indicator_id = _text(row.get("IndicatorId")) or _MISSING_ID
    observable = _legacy_observable(row, reject_non_global)
    time_generated = _datetime(row.get("TimeGenerated"))
    if isinstance(observable, RejectionReason) or time_generated is None or indicator_id == _MISSING_ID:
        return RowRejected(indicator_id, observable if isinstance(observable, RejectionReason) else _INVALID)
    valid_until = _datetime(row.get("ExpirationDateTime"))
    inactive = _inactive_reason(
        revoked=False, deleted=False, active=_flag(row.get("Active"), default=True), valid_until=valid_until, now=now
    )
    threat_type = _text(row.get("ThreatType"))
    return IndicatorCollected(
        observable=observable,
        indicator_id=indicator_id,
        upstream_version=_version(time_generated),
        source_system=_text(row.get("SourceSystem")),
        time_generated=time_generated,
        confidence=_confidence(row.get("ConfidenceScore")),
        valid_until=valid_until,
        active=inactive is None,
        inactive_reason=inactive,
        tags=_strings(_dynamic(row.get("Tags"))),
        tlp=_tlp_level(row.get("TrafficLightProtocolLevel")),
        description=_text(row.get("Description")) or None,
        threat_types=(threat_type,) if threat_type else (),
    )


def _legacy_observable(row: Row, reject_non_global: bool) -> Normalised:
    hash_value = _text(row.get("FileHashValue"))
    if hash_value:
        algorithm = hash_algorithm_named(_text(row.get("FileHashType")))
        if algorithm is None:
            return RejectionReason.UNSUPPORTED_TYPE
        return normalise(KeyKind(ObservableType.FILE_HASH, algorithm), hash_value, reject_non_global=reject_non_global)
    for column, kind in _LEGACY_OBSERVABLE_COLUMNS:
        value = _text(row.get(column))
        if value:
            return normalise(kind, value, reject_non_global=reject_non_global)
    return RejectionReason.UNSUPPORTED_TYPE


def _inactive_reason(
    *, revoked: bool, deleted: bool, active: bool, valid_until: datetime | None, now: datetime
) -> InactiveReason | None:
    if revoked:
        return InactiveReason.REVOKED
    if deleted:
        return InactiveReason.DELETED
    if not active:
        return InactiveReason.INACTIVE
    if valid_until is not None and valid_until < now:
        return InactiveReason.EXPIRED
    return None


# --- defensive column readers ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _dynamic(value: Any) -> Any:
    """A dynamic column arrives as a JSON string; anything unreadable counts as absent."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:  # also covers the JSON decoder's own errors
        return value


def _mapping(value: Any) -> Mapping[str, Any]:
    parsed = _dynamic(value)
    return parsed if isinstance(parsed, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value.strip(),) if value.strip() else ()
    if isinstance(value, list):
        return tuple(item.strip() for item in value if isinstance(item, str) and item.strip())
    return ()


def _flag(value: Any, *, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return default


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, str) and value.strip():
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _version(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _confidence(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    rounded = round(value)
    return rounded if 0 <= rounded <= 100 else None


def _tlp_level(value: Any) -> Tlp | None:
    """`Amber`, `TLP:AMBER`, `amber` → Tlp.AMBER; TLP 1.0's `white` is TLP 2.0's `clear`."""
    level = _text(value).lower().removeprefix("tlp:").strip()
    if level == "white":
        return Tlp.CLEAR
    try:
        return Tlp(level)
    except ValueError:
        return None


def _tlp_marking(value: Any) -> Tlp | None:
    if not isinstance(value, list):
        return None
    return next((TLP_MARKINGS[ref] for ref in value if isinstance(ref, str) and ref in TLP_MARKINGS), None)
