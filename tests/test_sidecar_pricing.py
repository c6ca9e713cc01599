"""GPU-seconds to money, and the cloud-equivalent price table shipped as a data file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sidecar.pricing import (
    CLOUD_PRICES_ENV,
    DEFAULT_GPU_HOURLY_USD,
    CloudPriceTable,
    cost_usd,
    gpu_hourly_rate,
)


def test_cost_is_gpu_seconds_times_hourly_rate() -> None:
    assert cost_usd(3600.0, 2.99) == pytest.approx(2.99)
    assert cost_usd(0.06276, 2.99) == pytest.approx(0.06276 * 2.99 / 3600)
    assert cost_usd(-1.0, 2.0) == 0.0
    assert cost_usd(1.0, math.nan) == 0.0
    assert cost_usd(math.inf, 1.0) == 0.0


@given(st.floats(0, 1e9), st.floats(0, 1e4))
def test_cost_never_negative_or_nan(seconds: float, rate: float) -> None:
    value = cost_usd(seconds, rate)
    assert value >= 0.0 and math.isfinite(value)


def test_hourly_rate_prefers_configured_then_type_default() -> None:
    assert gpu_hourly_rate("H100-80GB", 4.0) == 4.0
    assert gpu_hourly_rate("H100-80GB") == DEFAULT_GPU_HOURLY_USD["H100-80GB"]
    assert gpu_hourly_rate("h100-80gb") == DEFAULT_GPU_HOURLY_USD["H100-80GB"]
    assert gpu_hourly_rate("unknown-accelerator") == 0.0
    assert gpu_hourly_rate("x", table={"x": 1.5}) == 1.5


def test_shipped_table_is_dated_and_sourced() -> None:
    table = CloudPriceTable.load()
    assert {"gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5"} <= set(table.prices)
    for price in table.prices.values():
        assert price.source.startswith("https://")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.as_of)
        assert price.input > 0 and price.output >= price.input
    assert table.reference_for("tiny") == "gpt-4.1-nano"
    assert table.reference_for("some-other-model") == "gpt-4o-mini"


def test_cloud_cost_of_the_worked_example() -> None:
    table = CloudPriceTable.load()
    # 312 input (128 of them cached), 18 output at gpt-4o-mini: $0.15 / $0.075 / $0.60 per 1M.
    expected = (184 * 0.15 + 128 * 0.075 + 18 * 0.60) / 1e6
    assert table.cloud_cost_usd("gpt-4o-mini", 312, 18, cached_input_tokens=128) == pytest.approx(
        expected
    )
    # Cached tokens beyond the input are clamped; negatives count as zero.
    assert table.cloud_cost_usd("gpt-4o-mini", 10, 0, cached_input_tokens=50) == pytest.approx(
        10 * 0.075 / 1e6
    )
    assert table.cloud_cost_usd("gpt-4o-mini", -5, -5) == 0.0
    with pytest.raises(KeyError):
        table.cloud_cost_usd("no-such-model", 1, 1)


def test_override_file_and_feature_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "as_of": "2026-11-01",
                "models": {
                    "house-model": {"input": 1.0, "output": 2.0, "source": "https://x", "as_of": "2026-11-01"},
                    "premium": {"input": 3.0, "output": 15.0},
                },
                "references": {"models": {"tiny": "house-model"}, "features": {"legal": "premium"}},
            }
        )
    )
    monkeypatch.setenv(CLOUD_PRICES_ENV, str(path))
    table = CloudPriceTable.load()
    assert set(table.prices) == {"house-model", "premium"}
    assert table.prices["premium"].as_of == "2026-11-01"  # inherits the file's date
    assert table.cost_for("tiny", "chat", 1_000_000, 0) == pytest.approx(1.0)
    assert table.cost_for("tiny", "legal", 0, 1_000_000) == pytest.approx(15.0)
    assert table.cost_for("unmapped", None, 10, 10) is None  # no default: no cloud cost
    # Cached input without a cached price is priced as ordinary input.
    assert table.cost_for("tiny", None, 100, 0, 100) == pytest.approx(100 / 1e6)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"models": {"a": {"output": 1}}}, "bad entry"),
        ({"models": {"a": {"input": -1, "output": 1}}}, "negative"),
        ({"models": {"a": {"input": 1, "output": 1}}, "references": {"default": "b"}}, "no price"),
    ],
)
def test_bad_tables_are_refused(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CloudPriceTable.from_mapping(doc)
