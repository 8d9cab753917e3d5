"""A Log Analytics row → an `IndicatorCollected`, or the reason it is refused: pure functions.

Only the observable (and an indicator id past any real one's length) decides a rejection; anything else that is
missing or malformed (dynamic columns that are not JSON or too big to be real, odd confidence values) just
leaves the optional fields empty. Every column is bounded before it is parsed, so no row costs more than a
few milliseconds or makes a message bigger than the bus takes: texts and lists are cut to what Sentinel itself
keeps, and dates are clamped to what every system downstream accepts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

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

# Bounds on what a row may carry. A real Id is `<base64 of the source>---indicator--<uuid>` (~100 characters).
MAX_ID_LENGTH: Final = 512
MAX_DESCRIPTION_LENGTH: Final = 1000  # Sentinel truncates Data.description past 1,000 characters itself
MAX_LIST_ITEMS: Final = 64  # tags, labels, indicator types
MAX_ITEM_LENGTH: Final = 256
MAX_DYNAMIC_LENGTH: Final = 64 * 1024  # a dynamic column's JSON (Data holds one STIX object)
_MAX_SCALAR_LENGTH: Final = 256  # SourceSystem, a TLP level, a date
# The span of dates every system downstream accepts: POSIX time starts at 1970; year 9000 leaves a thousand
# years for arithmetic (an expiry rounded up, a lifetime added) before the year 9999 limit of most date types.
EARLIEST_DATE: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_DATE: Final = datetime(9000, 1, 1, tzinfo=UTC)


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
    if len(indicator_id) > MAX_ID_LENGTH:
        return RowRejected(shortened(indicator_id), _INVALID)
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
        source_system=_scalar(row.get("SourceSystem")),
        time_generated=time_generated,
        confidence=_confidence(row.get("Confidence")),
        valid_from=_datetime(row.get("ValidFrom")),
        valid_until=valid_until,
        active=inactive is None,
        inactive_reason=inactive,
        labels=_strings(data.get("labels")),
        tags=_strings(_dynamic(row.get("Tags"))),
        tlp=_tlp_level(additional.get("TLPLevel")) or _tlp_marking(data.get("object_marking_refs")),
        description=_description(data.get("description")),
        threat_types=_strings(data.get("indicator_types")),
    )


def time_generated(row: Row) -> datetime | None:
    """A row's TimeGenerated (either table), as the reader reads it."""
    return _datetime(row.get("TimeGenerated"))


def _read_legacy(row: Row, now: datetime, reject_non_global: bool) -> IndicatorCollected | RowRejected:
    indicator_id = _text(row.get("IndicatorId")) or _MISSING_ID
    if len(indicator_id) > MAX_ID_LENGTH:
        return RowRejected(shortened(indicator_id), _INVALID)
    observable = _legacy_observable(row, reject_non_global)
    time_generated = _datetime(row.get("TimeGenerated"))
    if isinstance(observable, RejectionReason) or time_generated is None or indicator_id == _MISSING_ID:
        return RowRejected(indicator_id, observable if isinstance(observable, RejectionReason) else _INVALID)
    valid_until = _datetime(row.get("ExpirationDateTime"))
    inactive = _inactive_reason(
        revoked=False, deleted=False, active=_flag(row.get("Active"), default=True), valid_until=valid_until, now=now
    )
    threat_type = _scalar(row.get("ThreatType"))
    return IndicatorCollected(
        observable=observable,
        indicator_id=indicator_id,
        upstream_version=_version(time_generated),
        source_system=_scalar(row.get("SourceSystem")),
        time_generated=time_generated,
        confidence=_confidence(row.get("ConfidenceScore")),
        valid_until=valid_until,
        active=inactive is None,
        inactive_reason=inactive,
        tags=_strings(_dynamic(row.get("Tags"))),
        tlp=_tlp_level(row.get("TrafficLightProtocolLevel")),
        description=_description(row.get("Description")),
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


def _scalar(value: Any) -> str:
    """A short text column (a name, a level); one longer than any real one counts as absent."""
    text = _text(value)
    return text if len(text) <= _MAX_SCALAR_LENGTH else ""


def shortened(text: str) -> str:
    """An over-long value as logs may show it."""
    return text[:64] + f"…({len(text)} characters)"


def _description(value: Any) -> str | None:
    return _text(value)[:MAX_DESCRIPTION_LENGTH].strip() or None


def _dynamic(value: Any) -> Any:
    """A dynamic column arrives as a JSON string; anything unreadable (or bigger than a real one) is absent."""
    if not isinstance(value, str):
        return value
    if not value.strip() or len(value) > MAX_DYNAMIC_LENGTH:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # ValueError covers the JSON decoder's errors; deep nesting recurses
        return value


def _mapping(value: Any) -> Mapping[str, Any]:
    parsed = _dynamic(value)
    return parsed if isinstance(parsed, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    kept = (item.strip() for item in items[:MAX_LIST_ITEMS] if isinstance(item, str))
    return tuple(item for item in kept if item and len(item) <= MAX_ITEM_LENGTH)


def _flag(value: Any, *, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return default


def _datetime(value: Any) -> datetime | None:
    """A date column in UTC, clamped to [EARLIEST_DATE, LATEST_DATE]; None when absent or unreadable."""
    if isinstance(value, str) and value.strip() and len(value) <= _MAX_SCALAR_LENGTH:
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    try:
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that crosses the calendar's edge
        return LATEST_DATE if value.year > 1 else EARLIEST_DATE
    return min(max(moment, EARLIEST_DATE), LATEST_DATE)


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
