"""/metrics of a running `tibridge run`: the services' own counters, histograms and gauges in Prometheus' text
format, and the Grafana dashboard asking only for metrics the services export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.observe.scraped import Scrape, scraped_run

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "tibridge.json"
# What PromQL writes that is not a metric name: aggregations, functions (followed by "("), keywords.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    return scraped_run(tmp_path_factory.mktemp("scraped-run"))


def test_the_health_port_serves_the_services_metrics_for_prometheus(scrape: Scrape) -> None:
    assert scrape.content_type.startswith("text/plain; version=0.0.4")
    names = scrape.names()
    for name in (
        "tibridge_collector_rows_total",
        "tibridge_collector_queries_total",
        "tibridge_collector_watermark_age_seconds",
        "tibridge_collector_watermark_lag_seconds_bucket",
        "tibridge_scorer_verdicts_total",
        "tibridge_scorer_graph_requests_total",
        "tibridge_scorer_graph_throttled_total",
        "tibridge_publisher_requests_total",
        "tibridge_publisher_objects_total",
        "tibridge_messages_settled_total",
        "tibridge_bus_backlog",
        "tibridge_bus_dead_letters",
        "tibridge_messages_in_flight",
        "process_resident_memory_bytes",
    ):
        assert name in names, name
    # Every row read was scored or refused, every scored message settled: the counts agree with each other.
    assert scrape.total("tibridge_collector_rows_total") > 0
    emitted = scrape.total("tibridge_collector_emitted_total")
    assert scrape.total("tibridge_scorer_verdicts_total") == emitted
    assert scrape.total("tibridge_messages_settled_total", 'subscription="indicators/scorer"') == emitted
    assert scrape.total("tibridge_scorer_verdicts_total", 'verdict="publish"') > 0
    # The backlog is read per subscription, and is empty once the run settled; the whitelist's values wait in
    # the publisher's dead-letter queue.
    assert scrape.total("tibridge_bus_backlog", 'subscription="indicators/scorer"') == 0
    assert scrape.total("tibridge_bus_dead_letters", 'subscription="scored/publisher"') > 0
    assert scrape.total("tibridge_messages_settled_total", 'outcome="dead_lettered"') > 0
    assert scrape.total("tibridge_collector_watermark_age_seconds") > 0
    # Categories only: no indicator value becomes a label.
    assert not re.search(r'="(\d{1,3}\.){3}\d{1,3}"', scrape.text)


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not inside a label matcher, a range,
    a string or a by/without list, not called as a function, and not a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if not rest.startswith("(") and match[0] not in _KEYWORDS:
            names.add(match[0])
    return names


def _expressions() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names('sum by (subscription, reason) (tibridge_x_total{outcome="dead_lettered"})') == {
        "tibridge_x_total"
    }
    assert metric_names("sum(rate(tibridge_a_total[$__rate_interval])) / max(tibridge_b)") == {
        "tibridge_a_total",
        "tibridge_b",
    }


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    titles = {title for title, _ in _expressions()}
    assert {
        "Backlog per subscription",
        "Verdicts per second",
        "API requests per second",
        "429s honoured per second",
        "Dead letters",
        "Watermark age",
    } <= titles


def test_the_dashboard_reads_only_metrics_the_services_export(scrape: Scrape) -> None:
    exported = scrape.names()
    for title, expression in _expressions():
        names = metric_names(expression)
        assert names, (title, expression)
        assert names <= exported, (title, sorted(names - exported))
