"""Telemetry setup: exporters chosen from the standard environment, URLs without queries, no-op by default."""

from __future__ import annotations

import os
import textwrap

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fixtures.runtime import free_port, fresh_process_output
from tibridge.common.settings import SettingsError
from tibridge.common.telemetry import AZURE_MONITOR, StripUrlQueries, exporter_names


@pytest.mark.parametrize(
    ("environ", "traces", "metrics"),
    [
        ({}, [], []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"], ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"], []),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console,otlp"},
            ["console"],
            ["console", "otlp"],
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_METRICS_EXPORTER": "none"}, ["otlp"], []),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}, [AZURE_MONITOR], [AZURE_MONITOR]),
    ],
    ids=["nothing", "otlp-endpoint", "otlp-traces-endpoint", "console", "none", "azure-monitor"],
)
def test_exporters_follow_the_standard_environment(
    environ: dict[str, str], traces: list[str], metrics: list[str]
) -> None:
    assert (exporter_names("TRACES", environ), exporter_names("METRICS", environ)) == (traces, metrics)


def test_an_unknown_exporter_names_the_variable_to_fix() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER: 'zipkin' is not supported"):
        exporter_names("TRACES", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_url_attributes_lose_their_query_fragment_and_credentials() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(StripUrlQueries())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {
        "url.full": "https://user:pw@graph.example/v1.0/$batch?sig=abc&x=1#part",
        "http.url": "https://h.example/api?api_key=k",
        "http.target": "/api/v2/intelligence/?api_key=k",
        "url.query": "api_key=k",
    }
    provider.get_tracer("test").start_span("call", attributes=attributes).end()
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        "url.full": "https://graph.example/v1.0/$batch",
        "http.url": "https://h.example/api",
        "http.target": "/api/v2/intelligence/",
        "url.query": "",
    }


_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from opentelemetry import trace
    from tibridge.common import telemetry

    telemetry.configure("tibridge-test")
    telemetry.configure("ignored-second-call")

    async def call() -> None:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                await client.get(sys.argv[1])
            except httpx.HTTPError:
                pass

    asyncio.run(call())
    telemetry.flush()
    print("PROVIDER", type(trace.get_tracer_provider()).__name__)
    """
)


def run_configured_process(extra_environment: dict[str, str], port: int = 0) -> str:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))
    }
    environment.update(extra_environment)
    url = f"http://127.0.0.1:{port or free_port()}/v1.0/path?sig=QUERY-SECRET"
    return fresh_process_output(_SCRIPT, url, environment=environment)


def test_a_process_with_no_telemetry_settings_installs_nothing() -> None:
    output = run_configured_process({})
    assert output.strip() == "PROVIDER ProxyTracerProvider"


def test_console_traces_show_httpx_spans_without_the_query_string() -> None:
    port = free_port()
    output = run_configured_process({"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"}, port)
    assert "PROVIDER TracerProvider" in output
    assert '"service.name": "tibridge-test"' in output
    assert f'"http://127.0.0.1:{port}/v1.0/path"' in output
    assert "QUERY-SECRET" not in output
