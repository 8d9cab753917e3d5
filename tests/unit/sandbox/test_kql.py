"""The strict KQL parser: exactly the collector's grammar, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tibridge.sandbox.dataset import COLUMNS
from tibridge.sandbox.kql import KqlError, Shape, parse
from tibridge.sandbox.tables import LEGACY_COLUMNS, LEGACY_TABLE, THREAT_INTEL_INDICATORS

TABLES = {
    THREAT_INTEL_INDICATORS: {name: kind for name, kind, _ in COLUMNS},
    LEGACY_TABLE: dict(LEGACY_COLUMNS),
}
IDS = {THREAT_INTEL_INDICATORS: "Id", LEGACY_TABLE: "IndicatorId"}

WINDOW = (
    "| where TimeGenerated >= datetime(2026-11-01T00:00:00.0000000Z)"
    " and TimeGenerated < datetime(2026-11-01T06:00:00.0000000Z)\n"
)
COLLECTOR_QUERY = (
    "ThreatIntelIndicators\n" + WINDOW + '| where SourceSystem in ("Microsoft Defender Threat Intelligence", '
    '"Premium Microsoft Defender Threat Intelligence")\n'
    '| where isempty(ObservableKey) or ObservableKey in ("ipv4-addr:value", "domain-name:value", '
    "\"file:hashes.'SHA-256'\")\n"
    "| summarize arg_max(TimeGenerated, *) by Id\n"
    "| order by TimeGenerated asc"
)
LEGACY_QUERY = (
    "ThreatIntelligenceIndicator\n" + WINDOW + '| where SourceSystem in ("Microsoft Defender Threat Intelligence")\n'
    "| summarize arg_max(TimeGenerated, *) by IndicatorId\n"
    "| order by TimeGenerated asc"
)
TAIL = "| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated asc"


def test_the_collector_query_parses_into_its_filters() -> None:
    query = parse(COLLECTOR_QUERY, TABLES, IDS)
    assert query.table == THREAT_INTEL_INDICATORS
    assert query.time_range is not None
    assert query.time_range.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert query.time_range.end == datetime(2026, 11, 1, 6, tzinfo=UTC)
    sources, keys = query.filters
    assert (sources.column, sources.allow_empty) == ("SourceSystem", False)
    assert sources.values == {
        "Microsoft Defender Threat Intelligence",
        "Premium Microsoft Defender Threat Intelligence",
    }
    assert (keys.column, keys.allow_empty) == ("ObservableKey", True)
    assert "file:hashes.'SHA-256'" in keys.values
    assert query.group_by == "Id"


def test_the_legacy_query_parses() -> None:
    query = parse(LEGACY_QUERY, TABLES, IDS)
    assert (query.table, query.group_by) == (LEGACY_TABLE, "IndicatorId")
    assert [f.column for f in query.filters] == ["SourceSystem"]


def test_every_where_line_is_optional() -> None:
    query = parse(
        "ThreatIntelIndicators\n| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated asc", TABLES, IDS
    )
    assert query.time_range is None
    assert query.filters == ()


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"tab\tnew\nline\rreturn"', "tab\tnew\nline\rreturn"),
        (r"'single \'quoted\''", "single 'quoted'"),
        ('"pipe | and ) paren"', "pipe | and ) paren"),
    ],
)
def test_string_literals_honour_escapes(literal: str, value: str) -> None:
    query = parse(
        f'ThreatIntelIndicators\n| where SourceSystem in ({literal}, "other")\n'
        "| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated asc",
        TABLES,
        IDS,
    )
    assert query.filters[0].values == {value, "other"}


def test_a_prefix_term_reads_every_spelling_of_a_key_and_ignores_case() -> None:
    query = parse(
        "ThreatIntelIndicators\n"
        '| where isempty(ObservableKey) or ObservableKey in ("url:value") or ObservableKey startswith "file:hashes."\n'
        + TAIL,
        TABLES,
        IDS,
    )
    [keys] = query.filters
    assert (keys.values, keys.prefixes, keys.allow_empty) == (
        frozenset({"url:value"}),
        frozenset({"file:hashes."}),
        True,
    )
    assert all(keys.passes(key) for key in ("", "url:value", "file:hashes.'SHA256'", "FILE:HASHES.MD5"))
    assert not any(keys.passes(key) for key in ("file:name", "domain-name:value", "xfile:hashes.MD5"))


@pytest.mark.parametrize(
    "where",
    [
        'ObservableKey startswith "file:" or SourceSystem in ("x")',  # one column per filter
        'Confidence startswith "8"',  # a string column only
        "ObservableKey startswith file",  # a string literal only
        "isempty(ObservableKey) or",
    ],
)
def test_a_column_filter_outside_the_grammar_is_refused(where: str) -> None:
    with pytest.raises(KqlError):
        parse(f"ThreatIntelIndicators\n| where {where}\n" + TAIL, TABLES, IDS)


@pytest.mark.parametrize(
    ("text", "syntax"),
    [
        ("ThreatIntelIndicators | take 10", True),
        (
            'ThreatIntelIndicators\n| where SourceSystem == "x"\n| summarize arg_max(TimeGenerated, *) by Id\n'
            "| order by TimeGenerated asc",
            True,
        ),
        ("ThreatIntelIndicators\n| summarize arg_max(TimeGenerated, *) by Id", True),
        ("ThreatIntelIndicators\n| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated desc", True),
        (
            "ThreatIntelIndicators\n" + TAIL + "\n| take 5",
            True,
        ),
        (
            'ThreatIntelIndicators\n| where SourceSystem in ("unterminated)\n' + TAIL,
            True,
        ),
        (
            "ThreatIntelIndicators\n| where TimeGenerated >= datetime(yesterday) and TimeGenerated < datetime(now)\n"
            "| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated asc",
            True,
        ),
        ("SecurityEvent\n| summarize arg_max(TimeGenerated, *) by Id\n| order by TimeGenerated asc", False),
        (
            'ThreatIntelIndicators\n| where Nonexistent in ("x")\n| summarize arg_max(TimeGenerated, *) by Id\n'
            "| order by TimeGenerated asc",
            False,
        ),
        (
            'ThreatIntelIndicators\n| where Confidence in ("x")\n| summarize arg_max(TimeGenerated, *) by Id\n'
            "| order by TimeGenerated asc",
            False,
        ),
        (
            "ThreatIntelIndicators\n| summarize arg_max(TimeGenerated, *) by Pattern\n| order by TimeGenerated asc",
            False,
        ),
        (
            'ThreatIntelligenceIndicator\n| where isempty(ObservableKey) or ObservableKey in ("url:value")\n'
            "| summarize arg_max(TimeGenerated, *) by IndicatorId\n| order by TimeGenerated asc",
            False,
        ),
    ],
)
def test_anything_outside_the_grammar_is_refused(text: str, syntax: bool) -> None:
    with pytest.raises(KqlError) as refused:
        parse(text, TABLES, IDS)
    assert refused.value.syntax is syntax


FILTERS = COLLECTOR_QUERY.rsplit("| summarize", 1)[0]


@pytest.mark.parametrize(
    ("tail", "span", "name", "ordered"),
    [
        ("| summarize Rows = count() by bin(TimeGenerated, 6h)", timedelta(hours=6), "Rows", False),
        (
            "| summarize N = count() by bin(TimeGenerated, 1.5d)\n| order by TimeGenerated asc",
            timedelta(days=1.5),
            "N",
            True,
        ),
        ("| summarize Rows = count() by bin(TimeGenerated, 30m)", timedelta(minutes=30), "Rows", False),
        ("| summarize Rows = count() by bin(TimeGenerated, 100ms)", timedelta(milliseconds=100), "Rows", False),
    ],
)
def test_a_count_per_bin_parses_with_the_collectors_filters(
    tail: str, span: timedelta, name: str, ordered: bool
) -> None:
    query = parse(FILTERS + tail, TABLES, IDS)
    assert (query.shape, query.bin_size, query.count_column, query.ordered) == (Shape.COUNT_BY_BIN, span, name, ordered)
    assert len(query.filters) == 2
    assert query.time_range is not None


def test_a_plain_count_parses() -> None:
    query = parse(FILTERS + "| count", TABLES, IDS)
    assert (query.shape, query.group_by) == (Shape.COUNT, None)


@pytest.mark.parametrize(
    "tail",
    [
        "| summarize count() by bin(TimeGenerated, 6h)",
        "| summarize Rows = count() by bin(TimeGenerated, 6)",
        "| summarize Rows = count() by bin(TimeGenerated, 6x)",
        "| summarize Rows = count() by bin(TimeGenerated, 0h)",
        "| summarize Rows = count() by bin(Modified, 6h)",
        "| summarize Rows = count() by TimeGenerated",
        "| summarize Source = count() by bin(TimeGenerated, 6h)",
        "| summarize Rows = count() by bin(TimeGenerated, 6h) | order by Rows desc",
        "| count | take 1",
    ],
)
def test_counts_outside_the_grammar_are_refused(tail: str) -> None:
    with pytest.raises(KqlError):
        parse(FILTERS + tail, TABLES, IDS)
