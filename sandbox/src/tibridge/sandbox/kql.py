"""A small, strict parser for exactly the KQL our collector emits:

    <Table>
    | where TimeGenerated >= datetime(<start>) and TimeGenerated < datetime(<end>)
    | where <StringColumn> in ("a", "b", ...)
    | where isempty(<StringColumn>) or <StringColumn> in ("a", ...) or <StringColumn> startswith "p"
    | summarize arg_max(TimeGenerated, *) by <IdColumn>
    | order by TimeGenerated asc

and the cheap counts a query planner sends first, with the same where-clauses:

    ... | summarize <Name> = count() by bin(TimeGenerated, <timespan literal>) [| order by TimeGenerated asc]
    ... | count

Each `where` is optional (in-filters may repeat); a column filter is `isempty(C)`, `C in (...)` and
`C startswith "p"` (case-insensitive, as KQL's is) joined by `or`, all on the same column; a timespan literal
is a number and one of KQL's units (`d`, `h`, `m`, `s`, `ms`, `microsecond`, `tick`: `6h`, `1.5d`, `30m`).
Anything else is a `KqlError`, which the Log Analytics stand-in answers with 400 BadArgumentError as the real
service does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from tibridge.sandbox.dataset import ColumnType


class KqlError(ValueError):
    """`syntax` tells a recognition error (SyntaxError) from a semantic one (SemanticError)."""

    def __init__(self, message: str, *, syntax: bool, position: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.syntax = syntax
        self.position = position
        self.token = token


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime  # inclusive
    end: datetime  # exclusive


@dataclass(frozen=True, slots=True)
class InFilter:
    column: str
    values: frozenset[str]
    allow_empty: bool  # the `isempty(C) or ...` form
    prefixes: frozenset[str] = frozenset()  # `C startswith "p"`, lower-cased: KQL's startswith ignores case

    def passes(self, value: str) -> bool:
        if (self.allow_empty and not value) or value in self.values:
            return True
        return bool(self.prefixes) and any(value.lower().startswith(prefix) for prefix in self.prefixes)


class Shape(StrEnum):
    NEWEST_PER_ID = "newest_per_id"  # summarize arg_max(TimeGenerated, *) by <Id> | order by TimeGenerated asc
    COUNT_BY_BIN = "count_by_bin"  # summarize <Name> = count() by bin(TimeGenerated, <span>)
    COUNT = "count"  # count


@dataclass(frozen=True, slots=True)
class Query:
    table: str
    time_range: TimeRange | None
    filters: tuple[InFilter, ...]
    group_by: str | None
    shape: Shape = Shape.NEWEST_PER_ID
    bin_size: timedelta | None = None
    count_column: str = "Count"
    ordered: bool = True  # whether the result rows are in TimeGenerated order (KQL's summarize has none)


_TIMESPAN_UNITS = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
    "microsecond": timedelta(microseconds=1),
    "tick": timedelta(microseconds=0.1),
}


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<datetime>datetime\(\s*(?P<instant>[^()\s]*)\s*\))
  | (?P<timespan>(?P<amount>[0-9]+(?:\.[0-9]+)?)(?P<unit>microsecond|tick|ms|d|h|m|s)(?![A-Za-z0-9_]))
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>>=|[<(),*|=])
    """,
    re.VERBOSE,
)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # datetime | timespan | string | name | symbol | end
    text: str
    value: str | datetime | timedelta
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise KqlError(
                f"Query could not be parsed at '{text[position]}' (position {position})",
                syntax=True,
                position=position,
                token=text[position],
            )
        kind = str(match.lastgroup)
        if kind == "datetime":
            tokens.append(_Token(kind, match.group(), _instant(match.group("instant"), position), position))
        elif kind == "timespan":
            span = float(match.group("amount")) * _TIMESPAN_UNITS[match.group("unit")]
            tokens.append(_Token(kind, match.group(), span, position))
        elif kind == "string":
            tokens.append(_Token(kind, match.group(), _unquote(match.group(), position), position))
        elif kind in ("name", "symbol"):
            tokens.append(_Token(kind, match.group(), match.group(), position))
        position = match.end()
    tokens.append(_Token("end", "<end of query>", "", len(text)))
    return tokens


def _instant(text: str, position: int) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise KqlError(
            f"'{text}' is not a valid datetime literal", syntax=True, position=position, token=text
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _unquote(literal: str, position: int) -> str:
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped not in _ESCAPES:
                raise KqlError(
                    f"unknown escape sequence '\\{escaped}' in string literal", syntax=True, position=position + index
                )
            out.append(_ESCAPES[escaped])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str, tables: Mapping[str, Mapping[str, ColumnType]], id_columns: Mapping[str, str]):
        self.tokens = _tokens(text)
        self.index = 0
        self.tables = tables
        self.id_columns = id_columns
        self.columns: Mapping[str, ColumnType] = {}

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, expected: str) -> KqlError:
        token = self.current
        return KqlError(
            f"Query could not be parsed at '{token.text}' (position {token.position}): expected {expected}",
            syntax=True,
            position=token.position,
            token=token.text,
        )

    def take(self, kind: str, text: str | None = None) -> _Token:
        token = self.current
        if token.kind != kind or (text is not None and token.text != text):
            raise self.fail(repr(text) if text else kind)
        self.index += 1
        return token

    def at(self, text: str) -> bool:
        return self.current.kind in ("name", "symbol") and self.current.text == text

    def column(self, *types: ColumnType) -> str:
        token = self.take("name")
        if token.text not in self.columns:
            raise KqlError(
                f"Failed to resolve scalar expression named '{token.text}'",
                syntax=False,
                position=token.position,
                token=token.text,
            )
        if types and self.columns[token.text] not in types:
            raise KqlError(
                f"Column '{token.text}' has type {self.columns[token.text]}, which this operator does not accept",
                syntax=False,
                position=token.position,
                token=token.text,
            )
        return token.text

    def parse(self) -> Query:
        table_token = self.take("name")
        if table_token.text not in self.tables:
            raise KqlError(
                f"Failed to resolve table or column expression named '{table_token.text}'",
                syntax=False,
                position=table_token.position,
                token=table_token.text,
            )
        self.columns = self.tables[table_token.text]
        time_range: TimeRange | None = None
        filters: list[InFilter] = []
        self.take("symbol", "|")
        while self.at("where"):
            self.index += 1
            if self.index + 1 < len(self.tokens) and self.tokens[self.index + 1].text == ">=":
                column = self.column()
                if time_range is not None or filters:
                    raise self.fail("the time range as the first and only range filter")
                time_range = self.time_range(column)
            else:
                filters.append(self.column_filter())
            self.take("symbol", "|")
        table, where = table_token.text, tuple(filters)
        if self.at("count"):
            self.index += 1
            self.take("end")
            return Query(table, time_range, where, None, Shape.COUNT)
        self.take("name", "summarize")
        if self.at("arg_max"):
            group_by = self.newest_per_id(self.id_columns[table])
            self.order_by_time()
            self.take("end")
            return Query(table, time_range, where, group_by)
        name, span = self.count_by_bin()
        ordered = not self.at_end()
        if ordered:
            self.order_by_time()
        self.take("end")
        return Query(table, time_range, where, None, Shape.COUNT_BY_BIN, span, name, ordered)

    def at_end(self) -> bool:
        return self.current.kind == "end"

    def order_by_time(self) -> None:
        self.take("symbol", "|")
        self.take("name", "order")
        self.take("name", "by")
        self.expect_time_generated()
        self.take("name", "asc")

    def count_by_bin(self) -> tuple[str, timedelta]:
        name = self.take("name").text
        if name in self.columns:
            raise KqlError(f"'{name}' is already a column of the table; name the count otherwise", syntax=False)
        self.take("symbol", "=")
        self.take("name", "count")
        self.take("symbol", "(")
        self.take("symbol", ")")
        self.take("name", "by")
        self.take("name", "bin")
        self.take("symbol", "(")
        self.expect_time_generated()
        self.take("symbol", ",")
        token = self.take("timespan")
        if not isinstance(token.value, timedelta) or token.value <= timedelta(0):
            raise KqlError(f"bin size '{token.text}' must be a positive timespan", syntax=False)
        self.take("symbol", ")")
        return name, token.value

    def expect_time_generated(self) -> None:
        if self.column(ColumnType.DATETIME) != "TimeGenerated":
            raise KqlError("only TimeGenerated is supported here", syntax=False, position=self.current.position)

    def time_range(self, column: str) -> TimeRange:
        if column != "TimeGenerated":
            raise KqlError("only TimeGenerated can bound a time range", syntax=False)
        self.take("symbol", ">=")
        start = self.instant()
        self.take("name", "and")
        self.expect_time_generated()
        self.take("symbol", "<")
        end = self.instant()
        return TimeRange(start, end)

    def instant(self) -> datetime:
        value = self.take("datetime").value
        if not isinstance(value, datetime):
            raise self.fail("a datetime(...) literal")
        return value

    def in_list(self, column: str) -> frozenset[str]:
        if self.columns[column] is not ColumnType.STRING:
            raise KqlError(f"'in' needs a string column; {column} is {self.columns[column]}", syntax=False)
        self.take("name", "in")
        self.take("symbol", "(")
        values: list[str] = []
        while not self.at(")"):
            if values:
                self.take("symbol", ",")
            values.append(str(self.take("string").value))
        self.take("symbol", ")")
        return frozenset(values)

    def column_filter(self) -> InFilter:
        """`isempty(C)`, `C in (...)`, `C startswith "p"`, joined by `or`, every term on the same column."""
        column: str | None = None
        values: set[str] = set()
        prefixes: set[str] = set()
        allow_empty = False
        while True:
            if self.at("isempty"):
                self.index += 1
                self.take("symbol", "(")
                term_column = self.column(ColumnType.STRING)
                self.take("symbol", ")")
                allow_empty = True
            else:
                term_column = self.column()
                if self.at("startswith"):
                    self.index += 1
                    if self.columns[term_column] is not ColumnType.STRING:
                        raise KqlError(f"'startswith' needs a string column; {term_column} is not", syntax=False)
                    prefixes.add(str(self.take("string").value).lower())
                else:
                    values |= self.in_list(term_column)
            if column is not None and term_column != column:
                raise self.fail(f"the same column '{column}' on every side of 'or'")
            column = term_column
            if not self.at("or"):
                return InFilter(column, frozenset(values), allow_empty, frozenset(prefixes))
            self.index += 1

    def newest_per_id(self, id_column: str) -> str:
        self.take("name", "arg_max")
        self.take("symbol", "(")
        self.expect_time_generated()
        self.take("symbol", ",")
        self.take("symbol", "*")
        self.take("symbol", ")")
        self.take("name", "by")
        group_by = self.column(ColumnType.STRING)
        if group_by != id_column:
            raise KqlError(f"this stand-in only summarizes by {id_column}", syntax=False)
        return group_by


def parse(text: str, tables: Mapping[str, Mapping[str, ColumnType]], id_columns: Mapping[str, str]) -> Query:
    """`tables` maps each table to its columns' types; `id_columns` names the column each is summarized by."""
    return _Parser(text, tables, id_columns).parse()
