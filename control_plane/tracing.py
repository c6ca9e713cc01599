"""OpenTelemetry tracing for the control plane: a server span per HTTP request, and per ingested
usage record a span in the record's own trace.

The provider belongs to the app (tests build many apps, each with an in-memory exporter); it is
never installed as the global provider. OTLP/HTTP export is switched on by the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) variable.

Why per-record spans: the sidecar ships records in batches, long after the request and from a
background task, so the batch's HTTP call carries no request's trace. Each record carries its
trace id and the sidecar span's id; the control plane opens a child of that span when the record
reaches the ledger, so "the spend was recorded" shows up inside the request's trace. The batch's
server span is linked from each record span, so the two views join.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from contextvars import ContextVar

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuledger.contracts import UsageRecord

SERVICE_NAME = "gpuledger-control-plane"
_PROPAGATOR = TraceContextTextMapPropagator()
# The app's tracer for the request being served (set by TracingMiddleware): services reach it
# without threading it through every route signature; outside a traced request it is None.
_TRACER: ContextVar[Tracer | None] = ContextVar("gpuledger_cp_tracer", default=None)


def build_tracer_provider(exporter: SpanExporter | None = None) -> TracerProvider | None:
    """A provider for one app. `exporter` (tests) wins over OTLP from the environment. None when
    nothing would export: spans nobody receives still cost ~35 us per ingested record."""
    if exporter is not None:
        processor: SpanProcessor = SimpleSpanProcessor(exporter)
    elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        return None
    name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    return provider


def install_tracing(app: FastAPI, enabled: bool, exporter: SpanExporter | None = None) -> None:
    """Sets `app.state.tracer_provider` (None when off) and adds the middleware when on."""
    provider = build_tracer_provider(exporter) if enabled else None
    app.state.tracer_provider = provider
    if provider is not None:
        app.add_middleware(TracingMiddleware, tracer=provider.get_tracer("gpuledger.control_plane"))


def flush_tracing(app: FastAPI) -> None:
    """At shutdown: spans still queued for OTLP go out now."""
    provider: TracerProvider | None = app.state.tracer_provider
    if provider is not None:
        provider.force_flush()


class TracingMiddleware:
    """Pure ASGI middleware: continues the caller's W3C trace (`traceparent`, `tracestate`) with a
    SERVER span per request, made current so handlers can parent spans on it. Named after the
    route template (`POST /api/v1/usage/batch`, never a path with ids in it)."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k in (b"traceparent", b"tracestate")
        }
        method = scope["method"]
        token = _TRACER.set(self.tracer)
        try:
            await self._traced(scope, receive, send, carrier, method)
        finally:
            _TRACER.reset(token)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, carrier: dict[str, str], method: str
    ) -> None:
        with self.tracer.start_as_current_span(
            method,
            # Without a traceparent this is an empty context: the request starts its own trace.
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
            # An exception escaping the app marks the span; an error *response* is marked from
            # its status code in send_wrapper.
            record_exception=True,
            set_status_on_exception=True,
        ) as span:

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    code = int(message["status"])
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                # The router fills scope["route"] in place: name the span after the template.
                template = getattr(scope.get("route"), "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)


def _record_parent(record: UsageRecord) -> trace.Span | None:
    """The sidecar's request span as a remote parent, when the record names it."""
    if not (record.trace_id and record.span_id):
        return None
    try:
        ctx = SpanContext(
            trace_id=int(record.trace_id, 16),
            span_id=int(record.span_id, 16),
            is_remote=True,
            # The sidecar only ships ids of spans it created and exported.
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except ValueError:  # not hex: a foreign or corrupt id is ignored, never an ingest error
        return None
    return NonRecordingSpan(ctx) if ctx.is_valid else None


def record_ingest_spans(records: Iterable[UsageRecord], new_ids: set[str], started_ns: int) -> None:
    """One CONSUMER span per record that carries its trace, as a child of the sidecar's request
    span, from when the batch arrived until it was committed (now). Linked to the current span
    (the batch's HTTP request). Duplicates (replays) are marked, not skipped: the replay is real.
    A no-op outside a traced request (tracing disabled, or the service called directly)."""
    tracer = _TRACER.get()
    if tracer is None:
        return
    batch = trace.get_current_span().get_span_context()
    links = [Link(batch)] if batch.is_valid else None
    end_ns = time.time_ns()
    for record in records:
        parent = _record_parent(record)
        if parent is None:
            continue
        span = tracer.start_span(
            "gpuledger.usage.ingest",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CONSUMER,
            links=links,
            start_time=started_ns,
            attributes={
                "gpuledger.request_id": record.id,
                "gpuledger.usage.duplicate": record.id not in new_ids,
                "feature": record.feature,
                "model": record.model,
                "inference.backend": record.backend,
                "gpu_seconds": record.gpu_seconds,
                "input_tokens": record.input_tokens,
                "output_tokens": record.output_tokens,
                "gen_ai.system": record.backend,
                "gen_ai.request.model": record.model,
                "gen_ai.usage.input_tokens": record.input_tokens,
                "gen_ai.usage.output_tokens": record.output_tokens,
            },
        )
        span.end(end_time=end_ns)
