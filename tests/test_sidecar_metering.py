"""Usage records from vLLM's usage shapes; metrics and spans fed from the same record."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from gpuledger.contracts import EnginePolicy
from sidecar.app import create_app
from sidecar.attribution import AttributionMetrics
from sidecar.metering import Metering, Outcome, new_request_id
from sidecar.metrics import SidecarMetrics
from sidecar.policy import Policy, load_policy_file
from sidecar.settings import Settings
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
    record = metering.build(
        request_id=request_id, policy=policy, key_id="key_dev", feature="chat",
        model="a-model-not-in-the-policy", engine=engine, started_at=datetime.now(UTC), t0=t0,
        outcome=outcome, actions=[], span=span, admitted=True,
    )  # fmt: skip
    await metering.write(record)
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


def test_clock_models_the_engine_queue_and_follows_policy_changes() -> None:
    registry = CollectorRegistry()
    metering = Metering(sidecar_id="s1", metrics=SidecarMetrics(registry), sink=MemorySink(),
                        attribution=AttributionMetrics(registry), prices=None)  # fmt: skip
    engine = EnginePolicy(name="local", url="http://x", max_num_seqs=2)
    clock = metering.clock(engine)
    for i in range(3):
        clock.admit(f"r{i}", prompt_tokens=9)
    # The third waits in vLLM's queue (unbilled) instead of sharing the engine's time.
    assert (clock.in_flight, clock.in_service) == (3, 2)
    assert metering.clock(engine) is clock
    # The policy drops the cap: a fresh clock without the queue model.
    uncapped = metering.clock(engine.model_copy(update={"max_num_seqs": None}))
    assert uncapped is not clock
    for i in range(3):
        uncapped.admit(f"r{i}", prompt_tokens=9)
    assert (uncapped.in_flight, uncapped.in_service) == (3, 3)


def test_default_upstream_takes_max_num_seqs_from_settings(tmp_path: Path) -> None:
    app = create_app(
        Settings(state_dir=tmp_path, upstream_max_num_seqs=16), sink=MemorySink()
    )  # no lifespan: nothing is started
    assert app.state.components.default_engine.max_num_seqs == 16
    assert Settings(state_dir=tmp_path).upstream_max_num_seqs is None
