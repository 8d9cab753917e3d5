"""Telemetry: trace context across the bus, and the process's OpenTelemetry setup.

Producers stamp W3C `traceparent` on envelopes, consumers continue it. `configure` installs trace and
metric exporters from the standard OTEL_* environment (and Azure Monitor's connection string), and on request a
Prometheus reader whose text `scrape()` returns (the health port's `/metrics`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tibridge.common.settings import SettingsError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# The Content-Type of `scrape()`'s text (Prometheus' text exposition format 0.0.4).
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_propagator = TraceContextTextMapPropagator()


def current_trace_context() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the active span, for the envelope of a message about to be sent."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


def context_from_traceparent(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The producer's context, so the consumer's span joins the producer's trace."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


# -- process setup --------------------------------------------------------------------------------------------

_SIGNALS = ("TRACES", "METRICS")
_SUPPORTED_EXPORTERS = ("otlp", "console", "none")
AZURE_MONITOR = "azure_monitor"
_URL_ATTRIBUTES = ("url.full", "http.url")
_PATH_ATTRIBUTES = ("http.target",)
_QUERY_ATTRIBUTES = ("url.query",)


@dataclass
class _Providers:
    tracer: TracerProvider | None = None
    meter: MeterProvider | None = None
    # What /metrics serves: the OpenTelemetry instruments (through the Prometheus reader) and the process's CPU
    # and memory; None when Prometheus was not asked for.
    prometheus: CollectorRegistry | None = None


_providers: _Providers | None = None
_providers_lock = threading.Lock()


def exporter_names(signal: str, environ: Mapping[str, str]) -> list[str]:
    """The exporters for TRACES or METRICS, from the standard OTEL_* variables plus Azure Monitor's.

    Unlike the SDK's own default, OTLP is on only when asked for (OTEL_<SIGNAL>_EXPORTER=otlp) or when an
    OTLP endpoint is set, so a process with no telemetry settings sends nothing anywhere.
    """
    variable = f"OTEL_{signal}_EXPORTER"
    raw = environ.get(variable)
    if raw is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        names = ["otlp"] if endpoint else []
    else:
        names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unsupported = [name for name in names if name not in _SUPPORTED_EXPORTERS]
    if unsupported:
        raise SettingsError(
            [f"{variable}: {unsupported[0]!r} is not supported; use {', '.join(_SUPPORTED_EXPORTERS)}."]
        )
    names = [] if "none" in names else names
    if environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        names.append(AZURE_MONITOR)
    return names


class StripUrlQueries(SpanProcessor):
    """Cuts query strings and fragments off URL attributes as spans start, before any exporter sees them.

    Our clients never put secrets in URLs; this holds for every instrumentation all the same.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        for key in _URL_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str):
                span.set_attribute(key, _without_query(value))
        for key in _PATH_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str):
                span.set_attribute(key, value.split("?", 1)[0])
        for key in _QUERY_ATTRIBUTES:
            if key in attributes:
                span.set_attribute(key, "")


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def configure(service_name: str, environ: Mapping[str, str] | None = None, *, prometheus: bool = False) -> None:
    """Traces and metrics from the standard OTEL_* environment; a no-op when nothing asks for them.

    OTLP (http/protobuf) when OTEL_EXPORTER_OTLP_ENDPOINT is set or OTEL_<SIGNAL>_EXPORTER=otlp; the console
    with OTEL_<SIGNAL>_EXPORTER=console; Azure Monitor when APPLICATIONINSIGHTS_CONNECTION_STRING is set; with
    `prometheus`, a pull reader whose exposition `scrape()` returns. OTEL_SERVICE_NAME overrides `service_name`.
    httpx requests get client spans when an exporter is set. Only the first call acts.
    """
    global _providers
    env = os.environ if environ is None else environ
    with _providers_lock:
        if _providers is not None:
            return
        providers = _Providers()
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true":
            span_exporters = [_span_exporter(name, env) for name in exporter_names("TRACES", env)]
            metric_exporters = [_metric_exporter(name, env) for name in exporter_names("METRICS", env)]
            resource = Resource.create({} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name})
            if span_exporters:
                providers.tracer = TracerProvider(resource=resource)
                providers.tracer.add_span_processor(StripUrlQueries())
                for span_exporter in span_exporters:
                    providers.tracer.add_span_processor(BatchSpanProcessor(span_exporter))
                trace.set_tracer_provider(providers.tracer)
            readers: list[MetricReader] = [PeriodicExportingMetricReader(exporter) for exporter in metric_exporters]
            if prometheus:
                providers.prometheus, reader = _prometheus_reader()
                readers.append(reader)
            if readers:
                providers.meter = MeterProvider(resource=resource, metric_readers=readers)
                metrics.set_meter_provider(providers.meter)
            if span_exporters or metric_exporters:
                from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

                HTTPXClientInstrumentor().instrument()
        _providers = providers


def scrape() -> bytes | None:
    """The metrics in Prometheus' text format, read now; None when `configure` was not asked for Prometheus."""
    providers = _providers
    if providers is None or providers.prometheus is None:
        return None
    from prometheus_client import generate_latest

    exposition: bytes = generate_latest(providers.prometheus)
    return exposition


def _prometheus_reader() -> tuple[CollectorRegistry, MetricReader]:
    """A registry of our own (not the client library's global one) holding the instruments and the process's CPU
    and memory. Imported here: only processes that serve /metrics pay for loading the exporter."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    # No scope labels: every instrument is the "tibridge" meter's, and they would only widen each series.
    return registry, PrometheusMetricReader(scope_info_enabled=False, registry=registry)


def flush(timeout_seconds: float = 5.0) -> None:
    """Exports what is buffered (at a clean stop); the SDK shuts its providers down at interpreter exit."""
    providers = _providers
    if providers is None:
        return
    timeout_millis = int(timeout_seconds * 1000)
    if providers.tracer is not None:
        providers.tracer.force_flush(timeout_millis)
    if providers.meter is not None:
        providers.meter.force_flush(timeout_millis)


def _span_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == AZURE_MONITOR:
        from azure.monitor.opentelemetry.exporter import AzureMonitorTraceExporter

        exporter: SpanExporter = AzureMonitorTraceExporter.from_connection_string(
            env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str, env: Mapping[str, str]) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    if name == AZURE_MONITOR:
        from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter

        exporter: MetricExporter = AzureMonitorMetricExporter.from_connection_string(
            env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()
