"""The Log Analytics tables the stand-in serves, and query evaluation over them.

Rows are kept sorted by TimeGenerated and pre-rendered as JSON fragments in the summarized column order
(`Id, TimeGenerated, ...rest`, as KQL's `summarize arg_max(TimeGenerated, *) by Id` answers), so a window
query is a bisect plus a scan of the window.
"""

from __future__ import annotations

import json
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import isodate  # type: ignore[import-untyped]  # ships no type information

from tibridge.sandbox.dataset import (
    COLUMNS,
    HASH_KEYS,
    ColumnType,
    Dataset,
    IndicatorRow,
    format_datetime,
    row_to_columns,
)
from tibridge.sandbox.kql import Query, Shape, TimeRange

THREAT_INTEL_INDICATORS = "ThreatIntelIndicators"
# Kusto's datetimes count from 0001-01-01, so that is where `bin(TimeGenerated, span)` starts counting spans.
_KUSTO_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
LEGACY_TABLE = "ThreatIntelligenceIndicator"

LEGACY_COLUMNS: tuple[tuple[str, ColumnType], ...] = (
    ("TimeGenerated", ColumnType.DATETIME),
    ("IndicatorId", ColumnType.STRING),
    ("NetworkIP", ColumnType.STRING),
    ("NetworkSourceIP", ColumnType.STRING),
    ("NetworkDestinationIP", ColumnType.STRING),
    ("DomainName", ColumnType.STRING),
    ("Url", ColumnType.STRING),
    ("FileHashType", ColumnType.STRING),
    ("FileHashValue", ColumnType.STRING),
    ("EmailSenderAddress", ColumnType.STRING),
    ("ConfidenceScore", ColumnType.REAL),
    ("Active", ColumnType.BOOL),
    ("ExpirationDateTime", ColumnType.DATETIME),
    ("ThreatType", ColumnType.STRING),
    ("Tags", ColumnType.STRING),
    ("Description", ColumnType.STRING),
    ("SourceSystem", ColumnType.STRING),
    ("TrafficLightProtocolLevel", ColumnType.STRING),
)
_LEGACY_VALUE_COLUMN = {
    "ipv4-addr:value": "NetworkIP",
    "ipv6-addr:value": "NetworkIP",
    "network-traffic:src_ref.value": "NetworkSourceIP",
    "network-traffic:dst_ref.value": "NetworkDestinationIP",
    "domain-name:value": "DomainName",
    "url:value": "Url",
    "email-addr:value": "EmailSenderAddress",
}
_LEGACY_HASH_TYPES = {key: str(algorithm).upper() for algorithm, keys in HASH_KEYS.items() for key in keys}


def _legacy_columns(row: IndicatorRow) -> dict[str, Any]:
    """The legacy table's view of the same indicator (string columns hold "" when empty)."""
    columns: dict[str, Any] = dict.fromkeys((name for name, kind in LEGACY_COLUMNS if kind is ColumnType.STRING), "")
    value_column = _LEGACY_VALUE_COLUMN.get(row.observable_key)
    if value_column:
        columns[value_column] = row.observable_value
    elif row.observable_key in _LEGACY_HASH_TYPES:
        columns["FileHashType"] = _LEGACY_HASH_TYPES[row.observable_key]
        columns["FileHashValue"] = row.observable_value
    indicator_types = row.data.get("indicator_types") or [""]
    columns.update(
        TimeGenerated=format_datetime(row.time_generated),
        IndicatorId=row.id,
        ConfidenceScore=float(row.confidence),
        Active=row.is_active and not row.revoked and not row.is_deleted,
        ExpirationDateTime=format_datetime(row.valid_until) if row.valid_until else None,
        ThreatType=indicator_types[0],
        Tags=json.dumps(list(row.tags)),
        Description=str(row.data.get("description", "")),
        SourceSystem=row.source_system,
        TrafficLightProtocolLevel=str(row.additional_fields.get("TLPLevel", "")),
    )
    return columns


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _encode_dynamic(value: Any) -> str:
    return _ENCODER.encode(list(value) if isinstance(value, tuple) else value)


def _table_columns(row: IndicatorRow) -> dict[str, Any]:
    return row_to_columns(row, dynamic=_encode_dynamic)


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: Sequence[tuple[str, ColumnType]]
    fragments: Sequence[str]  # each row as a rendered JSON array
    truncated: bool


class Table:
    """Rows rendered lazily: a window query renders only the rows of its window, each once.

    Every row in a window has been rendered by the time it is selected, so its fragment is ready."""

    def __init__(
        self,
        name: str,
        schema: Sequence[tuple[str, ColumnType]],
        id_column: str,
        rows: Sequence[IndicatorRow],
        render: Callable[[IndicatorRow], dict[str, Any]],
    ) -> None:
        self.name = name
        self.schema = tuple(schema)
        self.id_column = id_column
        self.types: Mapping[str, ColumnType] = dict(schema)
        # Column order after `summarize arg_max(TimeGenerated, *) by <id>`.
        self.result_columns = (
            (id_column, self.types[id_column]),
            ("TimeGenerated", ColumnType.DATETIME),
            *((name, kind) for name, kind in schema if name not in (id_column, "TimeGenerated")),
        )
        self._rows = rows
        self._render = render
        self._string_columns = [name for name, kind in schema if kind is ColumnType.STRING]
        self.times = [row.time_generated for row in rows]
        # Per row, once rendered: its string columns (what filters look at) and its JSON fragment.
        self._strings: list[dict[str, str] | None] = [None] * len(rows)
        self._fragments: list[str] = [""] * len(rows)

    def _filter_values(self, index: int) -> dict[str, str]:
        strings = self._strings[index]
        if strings is None:
            values = self._render(self._rows[index])
            strings = self._strings[index] = {name: values[name] for name in self._string_columns}
            self._fragments[index] = _ENCODER.encode([values[name] for name, _ in self.result_columns])
        return strings

    def _matching(self, query: Query, timespan: TimeRange | None) -> list[int]:
        """The indices of the rows the query's time range, the body's timespan and its filters let through."""
        start, end = 0, len(self.times)
        for bounds in (query.time_range, timespan):
            if bounds is not None:
                start = max(start, bisect_left(self.times, bounds.start))
                end = min(end, bisect_left(self.times, bounds.end))
        return [
            index
            for index in range(start, end)
            if all(f.passes(self._filter_values(index)[f.column]) for f in query.filters)
        ]

    def query(self, query: Query, timespan: TimeRange | None, row_cap: int) -> QueryResult:
        matching = self._matching(query, timespan)
        if query.shape is Shape.COUNT:
            return QueryResult((("Count", ColumnType.LONG),), [f"[{len(matching)}]"], truncated=False)
        if query.shape is Shape.COUNT_BY_BIN:
            return self._count_by_bin(query, matching)
        newest: dict[str, int] = {}
        for index in matching:
            key = self._filter_values(index)[self.id_column]
            newest.pop(key, None)  # re-insert so dict order stays TimeGenerated order
            newest[key] = index
        selected = list(newest.values())
        return QueryResult(
            columns=self.result_columns,
            fragments=[self._fragments[index] for index in selected[:row_cap]],
            truncated=len(selected) > row_cap,
        )

    def _count_by_bin(self, query: Query, matching: Sequence[int]) -> QueryResult:
        assert query.bin_size is not None
        size = query.bin_size
        bins = Counter(_KUSTO_EPOCH + ((self.times[index] - _KUSTO_EPOCH) // size) * size for index in matching)
        rows = [_ENCODER.encode([format_datetime(start), n]) for start, n in sorted(bins.items())]
        if not query.ordered:
            # KQL's summarize promises no order; a seeded shuffle keeps a client from relying on one.
            random.Random(len(rows)).shuffle(rows)
        columns = (("TimeGenerated", ColumnType.DATETIME), (query.count_column, ColumnType.LONG))
        return QueryResult(columns, rows, truncated=False)


def build_tables(dataset: Dataset) -> dict[str, Table]:
    return {
        THREAT_INTEL_INDICATORS: Table(
            THREAT_INTEL_INDICATORS,
            [(name, kind) for name, kind, _ in COLUMNS],
            "Id",
            dataset.rows,
            _table_columns,
        ),
        LEGACY_TABLE: Table(LEGACY_TABLE, LEGACY_COLUMNS, "IndicatorId", dataset.rows, _legacy_columns),
    }


def parse_timespan(text: str | None, now: datetime) -> TimeRange | None:
    """The body's `timespan`: an ISO 8601 duration (ending now), `start/end`, `start/duration` or
    `duration/end`."""
    if not text:
        return None

    def instant(part: str) -> datetime:
        value: datetime = isodate.parse_datetime(part)
        if value.tzinfo is None:
            raise ValueError(f"{part} has no time zone")
        return value

    def duration(part: str) -> Any:
        return isodate.parse_duration(part)

    try:
        if "/" not in text:
            return TimeRange(now - duration(text), now)
        first, second = text.split("/", 1)
        if first.startswith("P"):
            end = instant(second)
            return TimeRange(end - duration(first), end)
        start = instant(first)
        return TimeRange(start, start + duration(second) if second.startswith("P") else instant(second))
    except (ValueError, isodate.ISO8601Error) as error:
        raise ValueError(f"timespan {text!r} is not an ISO 8601 duration or interval: {error}") from None
