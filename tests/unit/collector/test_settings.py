"""CollectorSettings: defaults, parsing, one clear line per bad setting, and hostile values stay data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.collector import collector_settings as settings
from tibridge.collector.kql import SUPPORTED_OBSERVABLE_KEYS, IndicatorTable, QuerySpec, build_query
from tibridge.collector.settings import CheckpointKind, CollectorSettings, RunMode, blob_endpoint_of
from tibridge.common.sentinel import MDTI_SOURCE_SYSTEMS
from tibridge.common.settings import SettingsError, load_settings, setting_fields


def problems(**values: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        settings(**values)
    return caught.value.problems


def test_defaults() -> None:
    loaded = settings()
    collecting = loaded.collector
    assert loaded.loganalytics.endpoint == "https://api.loganalytics.io"
    assert collecting.table is IndicatorTable.NEW
    assert collecting.source_systems == list(MDTI_SOURCE_SYSTEMS)
    assert collecting.observable_keys == list(SUPPORTED_OBSERVABLE_KEYS)
    assert collecting.mode is RunMode.ONCE
    assert "file:hashes." in collecting.observable_keys  # every hash key, whatever its spelling
    assert (collecting.overlap, collecting.settle_delay) == (timedelta(minutes=15), timedelta(minutes=5))
    assert (collecting.initial_lookback, collecting.interval) == (timedelta(days=14), timedelta(minutes=5))
    assert (loaded.loganalytics.row_cap, collecting.rows_per_query, collecting.batch_size) == (500_000, 10_000, 500)
    # Log Analytics' documented limits per identity.
    assert (loaded.loganalytics.max_concurrent_queries, loaded.loganalytics.requests_per_30_seconds) == (5, 200)
    assert (collecting.max_unsettled, collecting.no_rows_warning_after) == (20_000, timedelta(days=1))
    assert loaded.checkpoint.store is CheckpointKind.FILE
    assert str(loaded.checkpoint.path) == ".tibridge/collector-checkpoint.json"
    assert collecting.since is None


def test_every_field_is_documented() -> None:
    assert all(field.description for _, field in setting_fields(CollectorSettings))


def test_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS", "Microsoft Defender Threat Intelligence, Other Feed")
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_OBSERVABLE_KEYS", '["url:value", "file:hashes.\'SHA-256\'"]')
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_SINCE", "P30D")
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_ROWS_PER_QUERY", "2500")
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_MODE", "loop")
    monkeypatch.setenv("TIBRIDGE_COLLECTOR_TABLE", "legacy")
    collecting = settings().collector
    assert collecting.source_systems == ["Microsoft Defender Threat Intelligence", "Other Feed"]
    assert collecting.observable_keys == ["url:value", "file:hashes.'SHA-256'"]
    assert (collecting.since, collecting.rows_per_query) == (timedelta(days=30), 2500)
    assert (collecting.mode, collecting.table) == (RunMode.LOOP, IndicatorTable.LEGACY)


def test_a_hostile_source_system_stays_one_string_literal_in_the_query() -> None:
    hostile = 'MDTI")\n| union SecurityEvent\n| where ("x" == "x'
    collecting = settings(collector_source_systems=[hostile, "x\\"]).collector
    spec = QuerySpec(collecting.table, collecting.source_systems, collecting.observable_keys)
    query = build_query(spec, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC))
    assert query.splitlines()[2] == (
        '| where SourceSystem in ("MDTI\\")\\n| union SecurityEvent\\n| where (\\"x\\" == \\"x", "x\\\\")'
    )
    assert len(query.splitlines()) == 6


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"loganalytics_workspace_id": "../../admin"}, "TIBRIDGE_LOGANALYTICS_WORKSPACE_ID: must be the workspace ID"),
        ({"loganalytics_endpoint": "http://api.loganalytics.io"}, "TIBRIDGE_LOGANALYTICS_ENDPOINT: plain http is only"),
        ({"loganalytics_endpoint": "http://127.0.0.1:9/la"}, "needs TIBRIDGE_DEV_MODE=true"),
        ({"collector_source_systems": "MDTI\x00"}, "TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS: contains the control character"),
        ({"collector_source_systems": " , "}, "TIBRIDGE_COLLECTOR_SOURCE_SYSTEMS: needs at least one"),
        ({"collector_observable_keys": "mac-addr:value"}, "'mac-addr:value' is not an ObservableKey"),
        ({"collector_observable_keys": "[not json"}, "is not a valid JSON list"),
        ({"collector_min_window": "P0D"}, "TIBRIDGE_COLLECTOR_MIN_WINDOW"),
        ({"collector_rows_per_query": 0}, "TIBRIDGE_COLLECTOR_ROWS_PER_QUERY"),
        ({"loganalytics_max_concurrent_queries": 6}, "TIBRIDGE_LOGANALYTICS_MAX_CONCURRENT_QUERIES"),
        ({"loganalytics_requests_per_30_seconds": 201}, "TIBRIDGE_LOGANALYTICS_REQUESTS_PER_30_SECONDS"),
        ({"loganalytics_row_cap": 1}, "TIBRIDGE_LOGANALYTICS_ROW_CAP"),
        ({"checkpoint_store": "blob"}, "TIBRIDGE_CHECKPOINT_STORE=blob needs"),
        ({"checkpoint_account_url": "http://acct.blob.core.windows.net"}, "TIBRIDGE_CHECKPOINT_ACCOUNT_URL: plain"),
        (
            {"checkpoint_connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=c2VjcmV0"},
            "CHECKPOINT_CONNECTION_STRING (its blob endpoint): plain http",
        ),
    ],
)
def test_bad_settings_are_one_clear_line_each(values: dict[str, Any], expected: str) -> None:
    found = problems(**values)
    assert len(found) == 1
    assert expected in found[0]
    assert "c2VjcmV0" not in found[0]


def test_the_workspace_id_is_required() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(CollectorSettings, bus="memory")
    assert any(line.startswith("TIBRIDGE_LOGANALYTICS_WORKSPACE_ID:") for line in caught.value.problems)


def test_loopback_http_and_blob_settings_work_in_dev_mode() -> None:
    azurite = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k==;BlobEndpoint=http://127.0.0.1:10000/a;"
    loaded = settings(
        dev_mode=True,
        loganalytics_endpoint="http://127.0.0.1:8080/loganalytics/",
        checkpoint_store="blob",
        checkpoint_connection_string=azurite,
    )
    assert loaded.loganalytics.endpoint == "http://127.0.0.1:8080/loganalytics"
    assert loaded.loganalytics.over_http
    assert "k==" not in repr(loaded)


@pytest.mark.parametrize(
    ("connection_string", "endpoint"),
    [
        (
            "AccountName=acct;AccountKey=a=b=;EndpointSuffix=core.chinacloudapi.cn",
            "https://acct.blob.core.chinacloudapi.cn",
        ),
        ("BlobEndpoint=https://x.example/;SharedAccessSignature=sv=1", "https://x.example/"),
        ("UseDevelopmentStorage=true", None),
    ],
)
def test_the_blob_endpoint_of_a_connection_string(connection_string: str, endpoint: str | None) -> None:
    assert blob_endpoint_of(connection_string) == endpoint
