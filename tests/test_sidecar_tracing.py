"""Tracing setup: the sampling ratio (issue 9) and the `/v1/` dispatcher's error path.

Spans go to the SDK's in-memory exporter; the end-to-end trace through vLLM is in
test_tracing_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from sidecar.app import create_app
from sidecar.settings import Settings
from sidecar.sinks import MemorySink
from sidecar.tracing import build_tracer_provider, parent_context, trace_id_hex

SAMPLED_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_default_ratio_records_every_span() -> None:
    spans = InMemorySpanExporter()
    tracer = build_tracer_provider("t", spans).get_tracer("t")
    for _ in range(20):
        tracer.start_span("chat tiny").end()
    assert len(spans.get_finished_spans()) == 20


def test_unsampled_spans_still_carry_a_trace_id() -> None:
    spans = InMemorySpanExporter()
    tracer = build_tracer_provider("t", spans, sample_ratio=0.0).get_tracer("t")
    span = tracer.start_span("chat tiny")
    span.end()
    assert not span.is_recording()
    assert trace_id_hex(span) is not None  # usage records keep their trace_id
    assert spans.get_finished_spans() == ()


def test_a_sampled_caller_wins_over_the_ratio() -> None:
    spans = InMemorySpanExporter()
    tracer = build_tracer_provider("t", spans, sample_ratio=0.0).get_tracer("t")
    tracer.start_span("chat tiny", context=parent_context(SAMPLED_PARENT, None)).end()
    (span,) = spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == SAMPLED_PARENT.split("-")[1]


def test_ratio_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULEDGER_TRACE_SAMPLE_RATIO", "0.25")
    assert Settings().trace_sample_ratio == 0.25
    monkeypatch.setenv("GPULEDGER_TRACE_SAMPLE_RATIO", "1.5")
    with pytest.raises(ValidationError):
        Settings()


async def test_an_unexpected_proxy_error_is_a_500_in_the_envelope(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path, engine_watch_enabled=False), sink=MemorySink())

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    app.proxy = broken  # type: ignore[assignment]  # stands in for a bug in the proxy
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
        resp = await client.post("/v1/chat/completions", json={})
        health = await client.get("/health")
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "internal_error"
    assert "a bug" not in resp.text
    assert health.json() == {"status": "ok"}  # other paths still go through FastAPI
