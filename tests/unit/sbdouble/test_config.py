"""The Service Bus double reads the emulator's config.json, and refuses what it cannot honour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.sbdouble.config import ConfigError, load_config, parse_config, parse_duration, parse_sql_filter
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC, emulator_config


def config_with_rule(expression: str, filter_type: str = "Sql") -> dict[str, Any]:
    rule = {"Name": "r", "Properties": {"FilterType": filter_type, "SqlFilter": {"SqlExpression": expression}}}
    subscription = {"Name": "s", "Properties": {"LockDuration": "PT1M", "MaxDeliveryCount": 3}, "Rules": [rule]}
    topic = {"Name": "t", "Properties": {}, "Subscriptions": [subscription]}
    return {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Queues": [], "Topics": [topic]}]}}


def test_reads_the_topology_generated_config() -> None:
    config = parse_config(emulator_config())
    publisher = config.topics[SCORED_TOPIC].subscriptions[PUBLISHER_SUBSCRIPTION]
    assert (publisher.lock_duration, publisher.max_delivery_count) == (60.0, 5)
    assert config.topics[SCORED_TOPIC].duplicate_detection_window == 20 * 60
    assert publisher.accepts({"verdict": "publish"})
    assert publisher.accepts({"verdict": "expire"})
    assert not publisher.accepts({"verdict": "drop"})
    assert not publisher.accepts({})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT1M", 60), ("PT20M", 1200), ("PT1H", 3600), ("P1D", 86400), ("PT1H30M5S", 5405), ("PT0.5S", 0.5)],
)
def test_iso_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1M", "PT", "P", "PT1X", "minute"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="ISO 8601 duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("expression", "name", "values"),
    [
        ("verdict IN ('publish','expire')", "verdict", {"publish", "expire"}),
        ("  verdict in ( 'publish' , 'expire' ) ", "verdict", {"publish", "expire"}),
        ("verdict = 'publish'", "verdict", {"publish"}),
        ("user.kind = 'it''s'", "kind", {"it's"}),
    ],
)
def test_supported_sql_filters(expression: str, name: str, values: set[str]) -> None:
    rule = parse_sql_filter(expression)
    assert (rule.property_name, set(rule.values)) == (name, values)


@pytest.mark.parametrize(
    "expression", ["verdict <> 'drop'", "verdict IN ('a') OR x = 'b'", "1=1", "verdict = publish", "EXISTS(verdict)"]
)
def test_other_sql_filters_are_refused_with_the_supported_forms(expression: str) -> None:
    with pytest.raises(ConfigError, match=r"prop IN \('a','b'\) or prop = 'a'"):
        parse_config(config_with_rule(expression))


def test_correlation_filters_are_refused() -> None:
    with pytest.raises(ConfigError, match="Sql filters only"):
        parse_config(config_with_rule("x = 'y'", filter_type="Correlation"))


def test_queues_are_refused() -> None:
    document = config_with_rule("x = 'y'")
    document["UserConfig"]["Namespaces"][0]["Queues"] = [{"Name": "q"}]
    with pytest.raises(ConfigError, match="topics only"):
        parse_config(document)


def test_a_missing_or_foreign_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass --config"):
        load_config(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(ConfigError, match=r"UserConfig\.Namespaces"):
        load_config(other)


def test_subscription_without_rules_takes_everything() -> None:
    document = config_with_rule("x = 'y'")
    document["UserConfig"]["Namespaces"][0]["Topics"][0]["Subscriptions"][0]["Rules"] = []
    subscription = parse_config(document).topics["t"].subscriptions["s"]
    assert subscription.accepts({})
    assert subscription.accepts({"x": "z"})
