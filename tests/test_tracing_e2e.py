"""One trace across the stack: a client's W3C `traceparent` -> the sidecar's span (same trace,
parented to the caller, carrying the metering attributes) -> the usage record the real control
plane stores (same trace id), all through real parts: `openai` client, sidecar, vLLM, the durable
spool and shipper, and the control plane on SQLite. Spans are caught with the SDK's in-memory
exporter (the OTLP exporter is the same SDK pipeline with another exporter).

Not covered yet: the control plane emits no spans of its own, and the engine's spans need vLLM
started with `--otlp-traces-endpoint` (the sidecar forwards `traceparent` to it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.app import create_app
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.shipper import Shipper, SpoolSink
from sidecar.spool import Spool
from tests.control_plane_support import (
    SIDECAR_TOKEN,
    admin_client,
    cp_settings,
    run_control_plane,
    sqlite_url,
)
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar

pytestmark = pytest.mark.engine

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


def test_client_trace_reaches_sidecar_span_and_control_plane_ledger(
    engine_url: str, tmp_path: Path
) -> None:
    with run_control_plane(cp_settings(sqlite_url(tmp_path))) as cp_url:
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

            with admin_client(cp_url) as admin:

                def stored() -> list[dict[str, Any]]:
                    items: list[dict[str, Any]] = admin.get(
                        "/api/v1/usage/records", params={"feature": "chat"}
                    ).json()["items"]
                    return items

                records = _wait_for(stored, "the usage record in the control plane")

    # The sidecar's span continues the client's trace, under the client's span.
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN
    assert server.resource.attributes["service.name"] == "gpuledger-sidecar"
    attrs = server.attributes or {}
    assert attrs["feature"] == "chat" and attrs["model"] == "tiny"
    assert attrs["inference.backend"] == "vllm"
    assert attrs["input_tokens"] > 0 and attrs["output_tokens"] > 0
    assert attrs["gpu_seconds"] >= 0
    assert attrs["gen_ai.request.model"] == "tiny"
    # The control plane's ledger row carries the same trace id: spend joins the trace.
    assert len(records) == 1
    assert records[0]["trace_id"] == TRACE_ID
    assert records[0]["id"] == attrs["gpuledger.request_id"]
