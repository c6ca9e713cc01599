"""Calibration of the prefill cost factor: from a real engine's /metrics, and its edge cases."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import httpx
import pytest

from gpuledger.cli import main
from serving.profiles import PROFILES_DIR, load_profile
from sidecar.calibration import (
    CalibrationError,
    EngineCounters,
    estimate,
    parse_metrics,
    write_profile_factor,
)

# A hand-written exposition in vLLM 0.32's format (names and labels as the real engine emits them),
# for the arithmetic and edge cases; the engine-marked tests below read the real thing.
SAMPLE = """\
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 1200.0
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 200.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 510.0
# TYPE vllm:request_prefill_time_seconds histogram
vllm:request_prefill_time_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 10.0
vllm:request_prefill_time_seconds_count{engine="0",model_name="tiny"} 10.0
vllm:request_prefill_time_seconds_sum{engine="0",model_name="tiny"} 0.5
# TYPE vllm:request_decode_time_seconds histogram
vllm:request_decode_time_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 10.0
vllm:request_decode_time_seconds_count{engine="0",model_name="tiny"} 10.0
vllm:request_decode_time_seconds_sum{engine="0",model_name="tiny"} 2.5
# TYPE vllm:request_queue_time_seconds histogram
vllm:request_queue_time_seconds_count{engine="0",model_name="tiny"} 10.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="tiny"} 0.1
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_count{engine="0",model_name="tiny"} 100.0
vllm:iteration_tokens_total_sum{engine="0",model_name="tiny"} 1510.0
"""


def test_factor_arithmetic() -> None:
    counters = parse_metrics(SAMPLE)
    assert counters.requests == 10 and counters.cached_prompt_tokens == 200
    result = estimate(counters)
    # 0.5 s / 1000 uncached tokens vs 2.5 s / 500 decode tokens (510 minus 10 first tokens).
    assert result.prefill_cost_factor == pytest.approx((0.5 / 1000) / (2.5 / 500))
    assert result.mean_queue_seconds == pytest.approx(0.01)
    assert result.mean_tokens_per_iteration == pytest.approx(15.1)
    assert "prefill_cost_factor: 0.1" in result.summary()


def test_window_difference_and_refusals() -> None:
    later = parse_metrics(SAMPLE)
    assert estimate(later - EngineCounters()).prefill_cost_factor == pytest.approx(0.1)
    with pytest.raises(CalibrationError, match="finished requests"):
        estimate(later - later)
    with pytest.raises(CalibrationError, match="need 50"):
        estimate(later, min_requests=50)
    with pytest.raises(CalibrationError, match="no vLLM request metrics"):
        parse_metrics("# TYPE up gauge\nup 1\n")
    cached_only = EngineCounters(
        requests=3, prefill_seconds=1, decode_seconds=1, prompt_tokens=10, cached_prompt_tokens=10,
        generation_tokens=30,
    )
    with pytest.raises(CalibrationError, match="no prefill work"):
        estimate(cached_only)


def test_write_keeps_the_profile_readable(tmp_path: Path) -> None:
    path = tmp_path / "tiny-cpu.yaml"
    shipped = (PROFILES_DIR / "tiny-cpu.yaml").read_text().splitlines(keepends=True)
    # Without a factor line (the shipped file may gain one after a calibration).
    path.write_text("".join(x for x in shipped if not x.startswith("prefill_cost_factor:")))
    before = path.read_text()
    write_profile_factor(path, 0.12345, "calibrated in a test")
    assert path.read_text().startswith(before)
    assert load_profile(str(path)).prefill_cost_factor == pytest.approx(0.1235)
    write_profile_factor(path, 0.5, "again")  # replaced in place, not appended twice
    assert path.read_text().count("prefill_cost_factor:") == 1
    assert load_profile(str(path)).prefill_cost_factor == 0.5


async def _traffic(url: str, n: int) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n):
            r = await client.post(
                f"{url}/v1/completions",
                json={"model": "tiny", "prompt": f"calibration run {i} " * (5 + 3 * i),
                      "max_tokens": 24, "ignore_eos": True},
            )
            assert r.status_code == 200


@pytest.mark.engine
async def test_real_engine_metrics_give_a_usable_factor(engine_url: str) -> None:
    await _traffic(engine_url, 4)
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{engine_url}/metrics")).text
    result = estimate(parse_metrics(text))
    assert result.requests >= 4
    assert math.isfinite(result.prefill_cost_factor) and result.prefill_cost_factor > 0
    # A CPU engine: a prompt token is far cheaper than a decode step, but not free.
    assert 1e-4 < result.prefill_cost_factor < 10


@pytest.mark.engine
async def test_cli_writes_a_temp_profile(
    engine_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _traffic(engine_url, 3)
    path = tmp_path / "tiny-cpu.yaml"
    shutil.copy(PROFILES_DIR / "tiny-cpu.yaml", path)
    code = main(["calibrate", "--engine-url", engine_url, "--profile", str(path), "--write",
                 "--min-requests", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "prefill_cost_factor:" in out and f"wrote prefill_cost_factor to {path}" in out
    factor = load_profile(str(path)).prefill_cost_factor
    assert factor is not None and factor > 0
    assert main(["calibrate", "--engine-url", "http://127.0.0.1:9", "--min-requests", "1"]) == 2
    assert "cannot scrape" in capsys.readouterr().err
