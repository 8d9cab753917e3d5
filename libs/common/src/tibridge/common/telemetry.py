"""Trace context across the bus: producers stamp W3C `traceparent` on envelopes, consumers continue it."""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

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
