"""OpenTelemetry tracing: one span per proxied request, W3C `traceparent` in and out.

The tracer provider belongs to the app (tests build many apps, each with an in-memory exporter);
it is never installed as the global provider. OTLP/HTTP export is switched on by the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` variable; export is always batched (`BatchSpanProcessor`: a
background thread ships spans in batches, the request path only enqueues them).

Sampling (`GPULEDGER_TRACE_SAMPLE_RATIO`, default 1.0) is `ParentBased(TraceIdRatioBased)`: a
caller's sampling decision wins; root spans are kept at the ratio. An unsampled span is a no-op
that still carries a valid trace id, so usage records keep their `trace_id` and vLLM still gets a
`traceparent` (flagged unsampled) at any ratio.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def build_tracer_provider(
    service_name: str, exporter: SpanExporter | None = None, *, sample_ratio: float = 1.0
) -> TracerProvider:
    """A provider for one app. `exporter` (tests: exported synchronously, so a test sees its
    span as soon as the response is done) wins over OTLP from the environment."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if exporter is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def parent_context(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The caller's trace context from its W3C headers, if it sent one."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier)


def inject_headers(span: Span, headers: dict[str, str]) -> None:
    """Add `traceparent` (and `tracestate`) for `span` to upstream request headers."""
    _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))


def with_current_trace(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus `traceparent` of the current span, if there is one. Calls to the control
    plane from background tasks have none (their records carry the trace instead); a call made
    inside a span (a flush on request, a test) continues it."""
    out = dict(headers)
    _PROPAGATOR.inject(out)
    return out


def trace_id_hex(span: Span) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
