"""Load shedding: with a forced high KV-cache reading (fed to a real EngineWatch through its
`ingest` seam, the same path a scrape takes) low-priority features get 429 `overloaded` while
high-priority ones pass; plus the SLO gauge the alert rules use."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gpuledger.contracts import FeaturePolicy, KeyPolicy
from sidecar.engine_watch import EngineWatch
from sidecar.errors import RateLimited
from sidecar.hooks import RequestContext
from sidecar.shedding import ShedConfig, ShedGuard, register_slo_gauge
from tests.test_sidecar_engine_watch import Clock, vllm_text

LOW = FeaturePolicy(name="batch-summaries", priority=0, slo_ttft_ms=None)
HIGH = FeaturePolicy(name="chat", priority=5, slo_ttft_ms=2000, slo_e2e_ms=20000)


def ctx(feature: FeaturePolicy, engine: str = "main") -> RequestContext:
    key = KeyPolicy(id="k1", name="k", key_hash="0" * 64, features=[feature.name], default_feature=feature.name)
    return RequestContext(
        request_id="r1", key=key, feature=feature, model="tiny", engine=engine, stream=False,
        prompt_tokens_estimate=10, max_output_tokens=16, started_at=datetime.now(UTC),
    )


def guard_with(readings: list[str], *, sustain_s: float = 10.0) -> ShedGuard:
    clock = Clock()
    watch = EngineWatch({"main": "http://unused"}, interval_s=2.0, window_s=30.0, clock=clock)
    for i, text in enumerate(readings):
        if i:
            clock.t += 2.0
        watch.ingest("main", text)
    return ShedGuard(watch, lambda: [LOW, HIGH], ShedConfig(sustain_s=sustain_s, priority_cutoff=1))


async def test_high_kv_sheds_low_priority_and_serves_high() -> None:
    guard = guard_with([vllm_text(kv=0.95)] * 8)  # 14 s above 0.85
    low = ctx(LOW)
    with pytest.raises(RateLimited) as exc:
        await guard.admit(low)
    assert exc.value.code == "overloaded" and exc.value.status == 429
    assert exc.value.tier == "soft"
    assert exc.value.headers["retry-after"] == "5"
    assert low.guardrail_actions == ["shed:kv_cache"]
    assert await guard.admit(ctx(HIGH)) is None


async def test_short_spike_or_normal_load_sheds_nothing() -> None:
    spike = guard_with([vllm_text(kv=0.2)] * 5 + [vllm_text(kv=0.99)] * 2)
    assert await spike.admit(ctx(LOW)) is None
    calm = guard_with([vllm_text(kv=0.5)] * 10)
    assert await calm.admit(ctx(LOW)) is None
    unknown_engine = guard_with([vllm_text(kv=0.99)] * 10)
    assert await unknown_engine.admit(ctx(LOW, engine="elsewhere")) is None


async def test_p95_ttft_over_protected_slo_sheds() -> None:
    # Every new request in the window lands in the 1-10 s bucket: P95 far above chat's 2 s SLO.
    readings = [vllm_text(kv=0.1, ttft=(0, 0, 5 * i)) for i in range(1, 10)]
    guard = guard_with(readings)
    assert guard.protected_ttft_slo_s() == 2.0
    assert guard.pressure("main") == "ttft_slo"
    with pytest.raises(RateLimited):
        await guard.admit(ctx(LOW))
    assert await guard.admit(ctx(HIGH)) is None


def test_slo_gauge() -> None:
    registry = CollectorRegistry()
    register_slo_gauge(registry, lambda: [LOW, HIGH])
    text = generate_latest(registry).decode()
    assert 'gpuledger_feature_slo_seconds{feature="chat",kind="ttft"} 2.0' in text
    assert 'gpuledger_feature_slo_seconds{feature="chat",kind="e2e"} 20.0' in text
    assert "batch-summaries" not in text
