"""The one place the collector's KQL is written. Every value from settings enters as a quoted string
literal, so no setting can change what the query means."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

# Every `file:hashes.<algorithm>` key, whatever the producer's spelling (`'SHA-256'`, `SHA256`, `'SHA256'`):
# read by prefix, and the algorithm is decided when the row is normalised.
HASH_KEY_PREFIX = "file:hashes."
SUPPORTED_OBSERVABLE_KEYS = (
    "ipv4-addr:value",
    "ipv6-addr:value",
    "network-traffic:src_ref.value",
    "network-traffic:dst_ref.value",
    "domain-name:value",
    "url:value",
    "email-addr:value",
    HASH_KEY_PREFIX,
)
# The column a count query names its counts (not a column of either table).
COUNT_COLUMN = "Rows"

# Control characters and Unicode line/paragraph separators: only \n \r \t have a KQL escape.
_LINE_OR_CONTROL = frozenset({"Cc", "Zl", "Zp"})
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class IndicatorTable(StrEnum):
    NEW = "new"  # ThreatIntelIndicators (STIX based)
    LEGACY = "legacy"  # ThreatIntelligenceIndicator, retired in 2026

    @property
    def table_name(self) -> str:
        return "ThreatIntelIndicators" if self is IndicatorTable.NEW else "ThreatIntelligenceIndicator"

    @property
    def id_column(self) -> str:
        return "Id" if self is IndicatorTable.NEW else "IndicatorId"


class UnquotableValue(ValueError):
    pass


def string_literal(value: str) -> str:
    """A double-quoted KQL string literal holding exactly `value`."""
    unquotable = [char for char in value if char not in _ESCAPES and unicodedata.category(char) in _LINE_OR_CONTROL]
    if unquotable:
        raise UnquotableValue(f"contains the control character U+{ord(unquotable[0]):04X}; remove it")
    return '"' + "".join(_ESCAPES.get(char, char) for char in value) + '"'


def datetime_literal(moment: datetime) -> str:
    """`datetime(2026-11-01T00:00:00.0000000Z)`: UTC with Kusto's seven fractional digits."""
    if moment.tzinfo is None:
        raise ValueError("query bounds must be timezone-aware")
    return f"datetime({moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}0Z)"


def timespan_literal(span: timedelta) -> str:
    """`600s`, `250ms`, `17microsecond`: a positive whole number of KQL's coarsest unit that fits exactly."""
    micros = span // timedelta(microseconds=1)
    if micros <= 0:
        raise ValueError("a timespan literal must be positive")
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1_000 == 0:
        return f"{micros // 1_000}ms"
    return f"{micros}microsecond"


@dataclass(frozen=True)
class QuerySpec:
    table: IndicatorTable
    source_systems: Sequence[str]
    # Exact ObservableKey values, and HASH_KEY_PREFIX for every file hash key.
    observable_keys: Sequence[str]


def build_query(spec: QuerySpec, start: datetime, end: datetime) -> str:
    """The newest row per indicator with `start <= TimeGenerated < end`, oldest first."""
    return "\n".join(
        [
            *_filtered(spec, start, end),
            f"| summarize arg_max(TimeGenerated, *) by {spec.table.id_column}",
            "| order by TimeGenerated asc",
        ]
    )


def build_count_query(spec: QuerySpec, start: datetime, end: datetime, bin_size: timedelta) -> str:
    """How many rows (every re-published copy, so never fewer than the read returns) fall in each `bin_size`
    bin of `start <= TimeGenerated < end`; bins count from Kusto's epoch (0001-01-01), in no promised order."""
    return "\n".join(
        [
            *_filtered(spec, start, end),
            f"| summarize {COUNT_COLUMN} = count() by bin(TimeGenerated, {timespan_literal(bin_size)})",
        ]
    )


def _filtered(spec: QuerySpec, start: datetime, end: datetime) -> list[str]:
    systems = ", ".join(string_literal(system) for system in spec.source_systems)
    lines = [
        spec.table.table_name,
        f"| where TimeGenerated >= {datetime_literal(start)} and TimeGenerated < {datetime_literal(end)}",
        f"| where SourceSystem in ({systems})",
    ]
    if spec.table is IndicatorTable.NEW:
        exact = [key for key in spec.observable_keys if key != HASH_KEY_PREFIX]
        terms = ["isempty(ObservableKey)"]
        if exact:
            terms.append(f"ObservableKey in ({', '.join(string_literal(key) for key in exact)})")
        if HASH_KEY_PREFIX in spec.observable_keys:
            terms.append(f"ObservableKey startswith {string_literal(HASH_KEY_PREFIX)}")
        lines.append("| where " + " or ".join(terms))
    return lines
