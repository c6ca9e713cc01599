"""Engine watch: parsing vLLM's exposition (both metric generations), the rolling window, the
re-exported series, and a live scrape of the real engine."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.engine_watch import EngineWatch, Histogram, parse_vllm_metrics, quantile


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def vllm_text(
    *,
    kv: float = 0.0,
    running: int = 0,
    waiting: int = 0,
    ttft: tuple[int, int, int] = (0, 0, 0),
    old_names: bool = False,
) -> str:
    """vLLM 0.32-style exposition (names from /work/shared/notes/vllm-cpu.md); `ttft` are the
    per-bucket (not cumulative) counts for le=0.1, 1, 10."""
    kv_name = "vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc"
    itl = "vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds"
    lab = 'engine="0",model_name="tiny"'
    c1, c2, c3 = ttft[0], ttft[0] + ttft[1], ttft[0] + ttft[1] + ttft[2]
    return f"""# HELP {kv_name} KV usage
# TYPE {kv_name} gauge
{kv_name}{{{lab}}} {kv}
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{lab}}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{lab}}} {waiting}
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{{lab}}} 1280.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{{lab}}} 256.0
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{{{lab}}} 3.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{{lab},le="0.1"}} {c1}
vllm:time_to_first_token_seconds_bucket{{{lab},le="1.0"}} {c2}
vllm:time_to_first_token_seconds_bucket{{{lab},le="10.0"}} {c3}
vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {c3}
vllm:time_to_first_token_seconds_count{{{lab}}} {c3}
vllm:time_to_first_token_seconds_sum{{{lab}}} {c3 * 0.5}
# TYPE {itl} histogram
{itl}_bucket{{{lab},le="0.01"}} 5.0
{itl}_bucket{{{lab},le="+Inf"}} 6.0
{itl}_count{{{lab}}} 6.0
{itl}_sum{{{lab}}} 0.1
"""


def test_parse_both_generations() -> None:
    for old in (False, True):
        s = parse_vllm_metrics(vllm_text(kv=0.42, running=2, waiting=5, old_names=old), at=0.0)
        assert s.kv_cache_usage == pytest.approx(0.42)
        assert (s.requests_running, s.requests_waiting) == (2, 5)
        assert (s.prefix_cache_queries, s.prefix_cache_hits, s.preemptions) == (1280, 256, 3)
        assert s.histograms["inter_token_latency"].count == 6


def test_quantile_interpolates_like_prometheus() -> None:
    h = Histogram([(0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0)], 0.0)
    assert quantile(0.5, h, None) == pytest.approx(0.1)
    assert quantile(0.95, h, None) == pytest.approx(0.1 + 0.9 * 45 / 50)
    assert quantile(0.95, h, h) is None  # no increase: no answer
    inf_only = Histogram([(1.0, 0.0), (float("inf"), 4.0)], 0.0)
    assert quantile(0.95, inf_only, None) == 1.0


def test_window_p95_and_sustained_kv() -> None:
    clock = Clock()
    watch = EngineWatch({"e1": "http://unused"}, interval_s=2.0, window_s=10.0, clock=clock)
    watch.ingest("e1", vllm_text(kv=0.9, ttft=(100, 0, 0)))  # old, fast requests
    for i in range(1, 8):
        clock.t += 2.0
        # From here on every new request is slow (1-10 s bucket).
        watch.ingest("e1", vllm_text(kv=0.9, ttft=(100, 0, 10 * i)))
    p95 = watch.p95_ttft("e1")
    assert p95 is not None and 1.0 < p95 <= 10.0  # only the window's increase counts
    assert watch.kv_above_for("e1", 0.85, 10.0)
    assert not watch.kv_above_for("e1", 0.95, 1.0)
    assert not watch.kv_above_for("e1", 0.85, 60.0)  # history too short to call it sustained
    clock.t += 2.0
    watch.ingest("e1", vllm_text(kv=0.1))  # one low reading breaks the run
    assert not watch.kv_above_for("e1", 0.85, 0.0)
    clock.t += 60.0  # nothing fresh: the watch decides nothing
    assert watch.fresh("e1") is None
    assert watch.p95_ttft("e1") is None


def test_down_engine_and_reexport() -> None:
    clock = Clock()
    watch = EngineWatch({"main": "http://unused"}, clock=clock)
    registry = CollectorRegistry()
    watch.register(registry)
    watch.ingest("main", vllm_text(kv=0.5, running=1, ttft=(3, 1, 0)))
    text = generate_latest(registry).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["gpuledger_engine_up"].samples[0].value == 1.0
    assert fams["gpuledger_engine_up"].samples[0].labels == {"engine": "main"}
    assert fams["gpuledger_engine_kv_cache_usage_ratio"].samples[0].value == 0.5
    assert "gpuledger_engine_prefix_cache_hits_total" in text
    ttft_count = [
        s for s in fams["gpuledger_engine_ttft_seconds"].samples if s.name.endswith("_count")
    ]
    assert ttft_count[0].value == 4.0
    watch.ingest("main", None)
    text = generate_latest(registry).decode()
    assert 'gpuledger_engine_up{engine="main"} 0.0' in text
    # Counters stay continuous through an outage; gauges of a dead engine are dropped.
    assert 'gpuledger_engine_prefix_cache_queries_total{engine="main"} 1280.0' in text
    assert "gpuledger_engine_kv_cache_usage_ratio{" not in text


@pytest.mark.engine
async def test_scrapes_the_real_engine(engine_url: str) -> None:
    watch = EngineWatch({"local": engine_url}, interval_s=0.5)
    await watch.start()
    try:
        sample = await watch.scrape_once("local")
    finally:
        await watch.stop()
    assert sample.up
    assert 0.0 <= sample.kv_cache_usage <= 1.0
    assert "ttft" in sample.histograms and "e2e" in sample.histograms
    assert "inter_token_latency" in sample.histograms


async def test_unreachable_engine_is_down() -> None:
    from tests.conftest import free_port

    watch = EngineWatch({"gone": f"http://127.0.0.1:{free_port()}"}, timeout_s=1.0)
    await watch.start()
    try:
        sample = await watch.scrape_once("gone")
    finally:
        await watch.stop()
    assert not sample.up
    assert watch.fresh("gone") is None
