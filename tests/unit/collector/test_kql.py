"""The KQL the collector sends: exact text, and no setting can change its meaning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tibridge.collector.kql import (
    SUPPORTED_OBSERVABLE_KEYS,
    IndicatorTable,
    QuerySpec,
    UnquotableValue,
    build_count_query,
    build_query,
    datetime_literal,
    string_literal,
    timespan_literal,
)
from tibridge.sandbox.dataset import COLUMNS
from tibridge.sandbox.kql import Shape
from tibridge.sandbox.kql import parse as parse_kql
from tibridge.sandbox.tables import LEGACY_COLUMNS, LEGACY_TABLE, THREAT_INTEL_INDICATORS

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, 6, tzinfo=UTC)
MDTI = ("Microsoft Defender Threat Intelligence", "Premium Microsoft Defender Threat Intelligence")
SANDBOX_TABLES = {
    THREAT_INTEL_INDICATORS: {name: kind for name, kind, _ in COLUMNS},
    LEGACY_TABLE: dict(LEGACY_COLUMNS),
}
SANDBOX_IDS = {THREAT_INTEL_INDICATORS: "Id", LEGACY_TABLE: "IndicatorId"}


def test_the_query_for_the_new_table_is_exactly_this() -> None:
    query = build_query(QuerySpec(IndicatorTable.NEW, MDTI, SUPPORTED_OBSERVABLE_KEYS), START, END)
    assert query == (
        "ThreatIntelIndicators\n"
        "| where TimeGenerated >= datetime(2026-11-01T00:00:00.0000000Z)"
        " and TimeGenerated < datetime(2026-11-01T06:00:00.0000000Z)\n"
        '| where SourceSystem in ("Microsoft Defender Threat Intelligence", '
        '"Premium Microsoft Defender Threat Intelligence")\n'
        '| where isempty(ObservableKey) or ObservableKey in ("ipv4-addr:value", "ipv6-addr:value", '
        '"network-traffic:src_ref.value", "network-traffic:dst_ref.value", "domain-name:value", "url:value", '
        '"email-addr:value") or ObservableKey startswith "file:hashes."\n'
        "| summarize arg_max(TimeGenerated, *) by Id\n"
        "| order by TimeGenerated asc"
    )


def test_the_count_has_the_same_filters_and_counts_rows_per_bin() -> None:
    spec = QuerySpec(IndicatorTable.NEW, MDTI, SUPPORTED_OBSERVABLE_KEYS)
    count = build_count_query(spec, START, END, timedelta(minutes=20))
    read = build_query(spec, START, END)
    assert count.rsplit("\n", 1) == [read.rsplit("\n", 2)[0], "| summarize Rows = count() by bin(TimeGenerated, 1200s)"]
    parsed = parse_kql(count, SANDBOX_TABLES, SANDBOX_IDS)
    assert (parsed.shape, parsed.bin_size, parsed.count_column) == (Shape.COUNT_BY_BIN, timedelta(minutes=20), "Rows")
    assert parsed.filters == parse_kql(read, SANDBOX_TABLES, SANDBOX_IDS).filters


@pytest.mark.parametrize(
    ("span", "literal"),
    [
        (timedelta(seconds=1210), "1210s"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(microseconds=7), "7microsecond"),
    ],
)
def test_timespans_are_exact_literals(span: timedelta, literal: str) -> None:
    assert timespan_literal(span) == literal
    with pytest.raises(ValueError, match="positive"):
        timespan_literal(timedelta(0))


def test_every_hash_key_spelling_passes_the_prefix_filter_and_nothing_else() -> None:
    spec = QuerySpec(IndicatorTable.NEW, MDTI, SUPPORTED_OBSERVABLE_KEYS)
    [_, keys] = parse_kql(build_query(spec, START, END), SANDBOX_TABLES, SANDBOX_IDS).filters
    for key in ("file:hashes.MD5", "file:hashes.'SHA256'", "file:hashes.SHA512", "file:hashes.'SHA-512'", ""):
        assert keys.passes(key), key
    for key in ("file:name", "mac-addr:value", "x509-certificate:serial_number"):
        assert not keys.passes(key), key


def test_exact_keys_alone_have_no_prefix_term() -> None:
    query = build_query(QuerySpec(IndicatorTable.NEW, MDTI, ("url:value",)), START, END)
    assert '| where isempty(ObservableKey) or ObservableKey in ("url:value")\n' in query
    only_hashes = build_query(QuerySpec(IndicatorTable.NEW, MDTI, ("file:hashes.",)), START, END)
    assert '| where isempty(ObservableKey) or ObservableKey startswith "file:hashes."\n' in only_hashes


def test_the_legacy_table_is_summarised_by_indicator_id_without_observable_keys() -> None:
    query = build_query(QuerySpec(IndicatorTable.LEGACY, MDTI, SUPPORTED_OBSERVABLE_KEYS), START, END)
    assert query.splitlines()[0] == "ThreatIntelligenceIndicator"
    assert "ObservableKey" not in query
    assert "| summarize arg_max(TimeGenerated, *) by IndicatorId" in query


def test_bounds_are_rendered_in_utc_with_seven_fractional_digits() -> None:
    moment = datetime(2026, 11, 1, 2, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert datetime_literal(moment) == "datetime(2026-11-01T00:30:00.1234560Z)"
    with pytest.raises(ValueError, match="timezone-aware"):
        datetime_literal(datetime(2026, 11, 1))


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", '"plain"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak\r\ttab", '"line\\nbreak\\r\\ttab"'),
        ("it's", '"it\'s"'),
    ],
)
def test_string_literals_escape_quotes_backslashes_and_control_characters(value: str, literal: str) -> None:
    assert string_literal(value) == literal


@pytest.mark.parametrize("value", ["nul\x00", "bell\x07", "separator\u2028"])
def test_characters_without_a_kql_escape_are_refused(value: str) -> None:
    with pytest.raises(UnquotableValue, match="control character"):
        string_literal(value)


HOSTILE_SOURCE_SYSTEMS = (
    'MDTI") | union SecurityEvent | where ("1" == "1',
    'x"\n| take 1\n//',
    "x\\",
    "a'b|c",
    '\\"); drop table ThreatIntelIndicators //',
)


def test_hostile_settings_stay_inside_their_string_literals() -> None:
    spec = QuerySpec(IndicatorTable.NEW, HOSTILE_SOURCE_SYSTEMS, ("ipv4-addr:value", 'x") or (1 == 1'))
    query = build_query(spec, START, END)
    # The text the service receives: still six pipeline lines, every hostile value one string literal.
    assert len(query.splitlines()) == 6
    assert query.splitlines()[2] == (
        '| where SourceSystem in ("MDTI\\") | union SecurityEvent | where (\\"1\\" == \\"1", '
        '"x\\"\\n| take 1\\n//", "x\\\\", "a\'b|c", "\\\\\\"); drop table ThreatIntelIndicators //")'
    )
    # And a KQL parser reads back exactly the values we were given, and nothing else.
    parsed = parse_kql(query, SANDBOX_TABLES, SANDBOX_IDS)
    source_filter, key_filter = parsed.filters
    assert source_filter.column == "SourceSystem"
    assert source_filter.values == frozenset(HOSTILE_SOURCE_SYSTEMS)
    assert key_filter.values == frozenset({"ipv4-addr:value", 'x") or (1 == 1'})
    assert parsed.time_range is not None
    assert (parsed.time_range.start, parsed.time_range.end) == (START, END)
    assert parsed.group_by == "Id"


def test_both_tables_parse_as_the_sandbox_expects() -> None:
    for table, name in ((IndicatorTable.NEW, THREAT_INTEL_INDICATORS), (IndicatorTable.LEGACY, LEGACY_TABLE)):
        parsed = parse_kql(
            build_query(QuerySpec(table, MDTI, SUPPORTED_OBSERVABLE_KEYS), START, END), SANDBOX_TABLES, SANDBOX_IDS
        )
        assert parsed.table == name
