"""Load shedding: with a forced high KV-cache reading (fed to a real EngineWatch through its
`ingest` seam, the same path a scrape takes) low-priority features get 429 `overloaded` while
high-priority ones pass; plus the SLO gauge the alert rules use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gpuledger.contracts import FeaturePolicy, KeyPolicy
from sidecar.app import create_app
from sidecar.engine_watch import EngineWatch
from sidecar.errors import RateLimited
from sidecar.hooks import RequestContext
from sidecar.policy import PolicyStore
from sidecar.settings import Settings
from sidecar.shedding import ShedConfig, ShedGuard, register_slo_gauge, soft_guardrails
from sidecar.sinks import MemorySink
from tests.sidecar_support import DEV_SECRET, dev_snapshot, run_sidecar
from tests.test_sidecar_engine_watch import Clock, vllm_text

LOW = FeaturePolicy(name="batch-summaries", priority=0, slo_ttft_ms=None)
HIGH = FeaturePolicy(name="chat", priority=5, slo_ttft_ms=2000, slo_e2e_ms=20000)


def ctx(feature: FeaturePolicy, engine: str = "main") -> RequestContext:
    key = KeyPolicy(
        id="k1", name="k", key_hash="0" * 64, features=[feature.name], default_feature=feature.name
    )
    return RequestContext(
        request_id="r1",
        key=key,
        feature=feature,
        model="tiny",
        engine=engine,
        stream=False,
        prompt_tokens_estimate=10,
        max_output_tokens=16,
        started_at=datetime.now(UTC),
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


@pytest.mark.engine
def test_app_sheds_low_priority_with_injected_kv_reading(engine_url: str, tmp_path: Path) -> None:
    """The real sidecar with shedding on: an engine-watch reading of 97% KV cache is injected (the
    scraper is off so the real, idle engine does not overwrite it); a real `openai` client then
    gets 429 `overloaded` for the low-priority feature and a real completion for the high one."""
    store = PolicyStore(tmp_path)
    store.replace(dev_snapshot(
        engine_url, default={"priority": 0}, chat={"priority": 5, "slo_ttft_ms": 2000},
    ))  # fmt: skip
    settings = Settings(
        upstream_url=engine_url, state_dir=tmp_path, shedding_enabled=True,
        engine_watch_enabled=False, shedding_sustain_s=0.0,
    )  # fmt: skip
    sink = MemorySink()
    app = create_app(settings, policy_store=store, sink=sink)
    pack = soft_guardrails(settings, store, app.state.registry)
    assert pack.guard in app.state.components.guards
    with run_sidecar(app=app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=DEV_SECRET, max_retries=0)
        ask: Any = {"model": "tiny", "prompt": "hello", "max_tokens": 4}
        assert client.completions.create(**ask).choices  # no pressure yet: served
        pack.watch.ingest("local", vllm_text(kv=0.97))
        with pytest.raises(openai.RateLimitError) as exc:
            client.completions.create(**ask)  # feature `default`, priority 0
        assert exc.value.code == "overloaded"
        assert exc.value.response.headers["retry-after"] == "5"
        served = client.completions.create(**ask, extra_headers={"x-feature": "chat"})
        assert served.usage is not None and served.usage.completion_tokens > 0
        metrics = httpx.get(f"{url}/metrics").text
    assert 'gpuledger_engine_kv_cache_usage_ratio{engine="local"} 0.97' in metrics
    assert 'gpuledger_feature_slo_seconds{feature="chat",kind="ttft"} 2.0' in metrics
    assert (
        'gpuledger_guardrail_rejections_total{feature="default",reason="overloaded",tier="soft"} 1.0'
        in metrics
    )
    shed = [r for r in sink.records if r.status == "rejected:overloaded"]
    assert len(shed) == 1 and shed[0].feature == "default"
    assert "shed:kv_cache" in shed[0].guardrail_actions
