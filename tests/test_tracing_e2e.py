"""One trace across the stack, through real parts: a client's W3C `traceparent` (real `openai`
client) -> the sidecar's SERVER span (same trace, parented to the caller, metering attributes)
-> vLLM's `llm_request` span (the sidecar forwards `traceparent` upstream) -> the durable spool
and shipper -> the control plane's `gpuledger.usage.ingest` span (a child of the sidecar's span:
each usage record carries its trace and span id) and the stored ledger row (same trace id).

Sidecar and control plane spans are caught with the SDK's in-memory exporter, one per app (the
OTLP exporter is the same SDK pipeline with another exporter). vLLM exports only over OTLP, so
the engine test runs a small OTLP/HTTP receiver (protobuf, decoded with `opentelemetry.proto`)
and a second tiny vLLM engine started with `--otlp-traces-endpoint` pointing at it: the shared
engine is started without that flag and can't be reconfigured under other engineers. That one
test costs ~3 GB and about 80 s on an idle 2-core machine (222 s measured on a loaded one).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.policy_sync import PolicySync
from sidecar.settings import Settings
from sidecar.shipper import Shipper, SpoolSink
from sidecar.spool import Spool
from sidecar.tracing import build_tracer_provider
from tests.conftest import free_port
from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    cp_settings,
    make_record,
    post_usage,
    run_control_plane,
    sqlite_url,
)
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


def _wait_for(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def _hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


@dataclass
class Chain:
    sidecar: ReadableSpan  # the sidecar's SERVER span for the request
    ingest: ReadableSpan  # the control plane's span for the request's usage record
    control_plane: list[ReadableSpan]  # every finished control-plane span
    records: list[dict[str, Any]]  # the ledger rows for feature `chat`


def _run_chain(engine_url: str, tmp_path: Path) -> Chain:
    """One streamed chat completion with a client traceparent through sidecar -> `engine_url`,
    its usage shipped to a real control plane; waits for every span and the ledger row."""
    cp_spans = InMemorySpanExporter()
    with run_control_plane(cp_settings(sqlite_url(tmp_path)), span_exporter=cp_spans) as cp_url:
        store = PolicyStore(tmp_path / "state")
        store.replace(dev_snapshot(engine_url))
        settings = Settings(upstream_url=engine_url, state_dir=tmp_path / "state")
        spool = Spool(tmp_path / "spool.db")
        sink = SpoolSink(spool, Shipper(spool, control_plane_url=cp_url, token=SIDECAR_TOKEN))
        spans = InMemorySpanExporter()
        app = create_app(settings, policy_store=store, sink=sink, span_exporter=spans)
        with run_sidecar(app=app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=DEV_SECRET, max_retries=0)
            stream = client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "trace me"}],
                max_tokens=8,
                stream=True,
                extra_headers={
                    "traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01",
                    "x-feature": "chat",
                },
            )
            assert list(stream)
            server = _wait_for(
                lambda: [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER],
                "the sidecar's span",
            )[0]
            ingest = _wait_for(
                lambda: [
                    s
                    for s in cp_spans.get_finished_spans()
                    if s.name == "gpuledger.usage.ingest" and _hex_trace(s) == TRACE_ID
                ],
                "the control plane's ingest span",
            )[0]
            with admin_client(cp_url) as admin:
                records: list[dict[str, Any]] = admin.get(
                    "/api/v1/usage/records", params={"feature": "chat"}
                ).json()["items"]
    return Chain(server, ingest, list(cp_spans.get_finished_spans()), records)


def _assert_sidecar_and_control_plane_join(chain: Chain) -> None:
    server = chain.sidecar
    # The sidecar's span continues the client's trace, under the client's span.
    assert _hex_trace(server) == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN
    assert server.resource.attributes["service.name"] == "gpuledger-sidecar"
    attrs: dict[str, Any] = dict(server.attributes or {})
    assert attrs["feature"] == "chat" and attrs["model"] == "tiny"
    assert attrs["inference.backend"] == "vllm"
    assert attrs["input_tokens"] > 0 and attrs["output_tokens"] > 0
    assert attrs["gpu_seconds"] > 0  # it was served, so it was charged
    assert attrs["gen_ai.request.model"] == "tiny"

    # The control plane records the spend inside the same trace, as a child of the sidecar span.
    ingest = chain.ingest
    assert ingest.kind == SpanKind.CONSUMER
    assert ingest.parent is not None and format(ingest.parent.span_id, "016x") == _hex_span(server)
    assert ingest.resource.attributes["service.name"] == "gpuledger-control-plane"
    got: dict[str, Any] = dict(ingest.attributes or {})
    assert got["gpuledger.request_id"] == attrs["gpuledger.request_id"]
    assert got["gpuledger.usage.duplicate"] is False
    for name in ("feature", "model", "inference.backend", "input_tokens", "output_tokens"):
        assert got[name] == attrs[name], name
    assert got["gpu_seconds"] == pytest.approx(attrs["gpu_seconds"])
    # ... linked to the shipper's batch request, a SERVER span named after its route.
    batch = [s for s in chain.control_plane if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert [s.name for s in batch] == ["POST /api/v1/usage/batch"]
    assert [format(link.context.span_id, "016x") for link in ingest.links] == [_hex_span(batch[0])]
    assert (batch[0].attributes or {})["http.response.status_code"] == 200

    # The ledger row carries the same trace id: spend joins the trace.
    assert len(chain.records) == 1
    assert chain.records[0]["trace_id"] == TRACE_ID
    assert chain.records[0]["id"] == attrs["gpuledger.request_id"]


@pytest.mark.engine
def test_client_trace_joins_sidecar_span_control_plane_span_and_ledger(
    engine_url: str, tmp_path: Path
) -> None:
    _assert_sidecar_and_control_plane_join(_run_chain(engine_url, tmp_path))


async def test_control_plane_continues_a_sidecar_call_made_inside_a_span(tmp_path: Path) -> None:
    """The sidecar's control-plane clients send the current span's `traceparent`; the control
    plane's SERVER span continues it. A call without one starts its own trace."""
    cp_spans = InMemorySpanExporter()
    sidecar_spans = InMemorySpanExporter()
    tracer = build_tracer_provider("gpuledger-sidecar", sidecar_spans).get_tracer("test")
    with run_control_plane(cp_settings(sqlite_url(tmp_path)), span_exporter=cp_spans) as cp_url:
        sync = PolicySync(
            PolicyStore(tmp_path / "state"),
            control_plane_url=cp_url,
            token=SIDECAR_TOKEN,
            interval_s=3600,
        )
        with tracer.start_as_current_span("refresh policy") as outer:
            await sync.start()
        await sync.close()
        assert sync.store.loaded
        untraced = PolicySync(
            PolicyStore(tmp_path / "state2"), control_plane_url=cp_url, token=SIDECAR_TOKEN
        )
        await untraced.start()
        await untraced.close()

    served = [s for s in cp_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in served] == ["GET /api/v1/sidecar/policy"] * 2
    traced, fresh = served
    outer_ctx = outer.get_span_context()
    assert traced.context is not None and traced.context.trace_id == outer_ctx.trace_id
    assert traced.parent is not None and traced.parent.span_id == outer_ctx.span_id
    attrs = traced.attributes or {}
    assert attrs["http.route"] == "/api/v1/sidecar/policy"
    assert attrs["http.response.status_code"] == 200
    assert fresh.parent is None and fresh.context is not None
    assert fresh.context.trace_id != outer_ctx.trace_id


def test_ingest_spans_mark_replays_and_skip_records_without_a_usable_trace(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    traced = make_record().model_copy(update={"trace_id": TRACE_ID, "span_id": PARENT_SPAN})
    odd = make_record().model_copy(update={"trace_id": "not-a-trace", "span_id": "zz"})
    records = [traced, odd, make_record()]
    with run_control_plane(cp_settings(sqlite_url(tmp_path)), span_exporter=spans) as cp_url:
        assert post_usage(cp_url, records) == (3, 0)
        assert post_usage(cp_url, records) == (0, 3)  # the shipper's retry after a lost ack

    ingest = [s for s in spans.get_finished_spans() if s.name == "gpuledger.usage.ingest"]
    assert [(s.attributes or {})["gpuledger.usage.duplicate"] for s in ingest] == [False, True]
    for span in ingest:
        assert _hex_trace(span) == TRACE_ID
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN
        assert (span.attributes or {})["gpuledger.request_id"] == traced.id


def test_tracing_off_makes_no_spans(tmp_path: Path) -> None:
    spans = InMemorySpanExporter()
    traced = make_record().model_copy(update={"trace_id": TRACE_ID, "span_id": PARENT_SPAN})
    settings = cp_settings(sqlite_url(tmp_path), tracing_enabled=False)
    with run_control_plane(settings, span_exporter=spans) as cp_url:
        assert post_usage(cp_url, [traced]) == (1, 0)
    assert spans.get_finished_spans() == ()


# --- the engine's spans --------------------------------------------------------------------------


class _OtlpReceiver(BaseHTTPRequestHandler):
    """OTLP/HTTP protobuf `POST /v1/traces`: keeps (service attributes, span) pairs."""

    spans: list[tuple[dict[str, str], OtlpSpan]]
    lock: threading.Lock

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend((resource, span) for span in ss.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


@contextmanager
def _otlp_receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], OtlpSpan]]]]:
    spans: list[tuple[dict[str, str], OtlpSpan]] = []
    handler = type("Receiver", (_OtlpReceiver,), {"spans": spans, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", spans
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.engine
def test_engine_spans_join_the_trace(tmp_path: Path) -> None:
    """vLLM's `llm_request` span is a child of the sidecar's span, in the client's trace, and
    carries the engine's own view of the request (GenAI attributes) next to the sidecar's."""
    from serving.engine import EngineProcess
    from serving.profiles import load_profile

    base = load_profile("tiny-cpu")
    with _otlp_receiver() as (endpoint, received):
        profile = base.model_copy(
            update={
                "extra_args": [*base.extra_args, "--otlp-traces-endpoint", endpoint],
                "env": {
                    **base.env,
                    # vLLM's default is gRPC; our receiver speaks OTLP/HTTP protobuf.
                    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                    "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within 0.2 s, not 5 s
                },
            }
        )
        with EngineProcess.start(profile, port=free_port()) as engine:
            chain = _run_chain(engine.url, tmp_path)

            def engine_span() -> list[tuple[dict[str, str], OtlpSpan]]:
                return [
                    (res, s)
                    for res, s in list(received)  # a copy: the receiver thread appends
                    if s.name == "llm_request" and s.trace_id.hex() == TRACE_ID
                ]

            resource, span = _wait_for(engine_span, "vLLM's llm_request span")[0]

    _assert_sidecar_and_control_plane_join(chain)
    assert span.parent_span_id.hex() == _hex_span(chain.sidecar)
    assert span.kind == OtlpSpan.SPAN_KIND_SERVER
    attrs = {a.key: _value(a.value) for a in span.attributes}
    sidecar: dict[str, Any] = dict(chain.sidecar.attributes or {})
    assert attrs["gen_ai.request.max_tokens"] == sidecar["gen_ai.request.max_tokens"]
    assert attrs["gen_ai.usage.prompt_tokens"] == sidecar["input_tokens"]
    assert attrs["gen_ai.usage.completion_tokens"] == sidecar["output_tokens"]
    assert attrs["gen_ai.latency.e2e"] > 0
    assert resource.get("service.name")  # vLLM's own resource, distinct from ours
