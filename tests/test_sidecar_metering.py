"""Usage records from vLLM's usage shapes; metrics and spans fed from the same record."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from gpuledger.contracts import EnginePolicy
from sidecar.attribution import AttributionMetrics
from sidecar.metering import Metering, Outcome, new_request_id
from sidecar.metrics import SidecarMetrics
from sidecar.policy import Policy, load_policy_file
from sidecar.sinks import MemorySink
from sidecar.tracing import build_tracer_provider
from tests.sidecar_support import DEV_POLICY


def test_usage_shapes() -> None:
    chat = Outcome()
    chat.take_usage({"prompt_tokens": 9, "completion_tokens": 4,
                     "prompt_tokens_details": {"cached_tokens": 8}})  # fmt: skip
    assert (chat.input_tokens, chat.cached_input_tokens, chat.output_tokens) == (9, 8, 4)
    responses = Outcome()
    responses.take_usage({"input_tokens": 11, "output_tokens": 5,
                          "input_tokens_details": {"cached_tokens": 0}})  # fmt: skip
    assert (responses.input_tokens, responses.output_tokens) == (11, 5)
    plain = Outcome()
    plain.take_usage({"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": None})
    assert plain.cached_input_tokens == 0


async def test_finish_writes_one_record_and_feeds_metrics_and_span() -> None:
    registry, sink, spans = CollectorRegistry(), MemorySink(), InMemorySpanExporter()
    metering = Metering(sidecar_id="s1", metrics=SidecarMetrics(registry), sink=sink,
                        attribution=AttributionMetrics(registry), prices=None)  # fmt: skip
    policy = Policy.compile(load_policy_file(DEV_POLICY))
    engine = EnginePolicy(name="local", url="http://x", model="tiny", gpu_type="H100-80GB")
    request_id = new_request_id()
    metering.clock(engine).admit(request_id, prompt_tokens=9)
    span = build_tracer_provider("t", spans).get_tracer("t").start_span("chat tiny")
    outcome = Outcome(ttft_s=0.01, mean_itl_s=0.002, finish_reasons=["length"])
    outcome.take_usage({"prompt_tokens": 9, "completion_tokens": 4})
    t0 = time.monotonic() - 0.05
    record = await metering.finish(
        request_id=request_id, policy=policy, key_id="key_dev", feature="chat",
        model="a-model-not-in-the-policy", engine=engine, started_at=datetime.now(UTC), t0=t0,
        outcome=outcome, actions=[], span=span, admitted=True,
    )  # fmt: skip
    assert sink.records == [record]
    assert record.gpu_seconds > 0 and record.cost_usd > 0  # H100 default hourly rate
    assert record.e2e_ms >= 50 and record.ttft_ms == 10 and record.finish_reason == "length"
    assert record.trace_id is not None and record.sidecar_id == "s1"
    text = generate_latest(registry).decode()
    # An unknown model is labelled `other`: label values come from the policy only.
    assert 'gpuledger_tokens_total{feature="chat",kind="output",model="other"} 4.0' in text
    assert 'gpuledger_requests_total{feature="chat",model="other",status="ok"} 1.0' in text
    (finished,) = spans.get_finished_spans()
    attrs = dict(finished.attributes or {})
    assert attrs["gen_ai.usage.input_tokens"] == 9 and attrs["gpu_seconds"] == record.gpu_seconds
