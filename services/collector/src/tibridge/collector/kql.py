"""The one place the collector's KQL is written. Every value from settings enters as a quoted string
literal, so no setting can change what the query means."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

SUPPORTED_OBSERVABLE_KEYS = (
    "ipv4-addr:value",
    "ipv6-addr:value",
    "network-traffic:src_ref.value",
    "network-traffic:dst_ref.value",
    "domain-name:value",
    "url:value",
    "email-addr:value",
    "file:hashes.'SHA-256'",
    "file:hashes.MD5",
    "file:hashes.'SHA-1'",
)

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


@dataclass(frozen=True)
class QuerySpec:
    table: IndicatorTable
    source_systems: Sequence[str]
    observable_keys: Sequence[str]


def build_query(spec: QuerySpec, start: datetime, end: datetime) -> str:
    """The newest row per indicator with `start <= TimeGenerated < end`, oldest first."""
    systems = ", ".join(string_literal(system) for system in spec.source_systems)
    lines = [
        spec.table.table_name,
        f"| where TimeGenerated >= {datetime_literal(start)} and TimeGenerated < {datetime_literal(end)}",
        f"| where SourceSystem in ({systems})",
    ]
    if spec.table is IndicatorTable.NEW:
        keys = ", ".join(string_literal(key) for key in spec.observable_keys)
        lines.append(f"| where isempty(ObservableKey) or ObservableKey in ({keys})")
    lines += [f"| summarize arg_max(TimeGenerated, *) by {spec.table.id_column}", "| order by TimeGenerated asc"]
    return "\n".join(lines)
