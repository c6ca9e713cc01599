"""Money: GPU-seconds to USD, and the cloud-equivalent cost of the same tokens.

`cost_usd` turns attributed GPU-seconds into money at a GPU hourly rate. The rate comes from the
engine's config (`EnginePolicy.hourly_rate_usd`) or, when that is 0, from the per-GPU-type defaults
below. `CloudPriceTable` prices the same tokens at a public API's list price, from the dated data
file `sidecar/data/cloud_prices.yaml` (or `GPULEDGER_CLOUD_PRICES_FILE`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_GPU_HOURLY_USD",
    "CloudPrice",
    "CloudPriceTable",
    "cost_usd",
    "gpu_hourly_rate",
]

CLOUD_PRICES_ENV = "GPULEDGER_CLOUD_PRICES_FILE"

# USD per GPU-hour, on-demand list prices. Defaults only: set the real rate per engine
# (`hourly_rate_usd`). Recalled from the vendors' pricing pages on the dates shown, not re-checked
# from the build machine (no internet).
DEFAULT_GPU_HOURLY_USD: dict[str, float] = {
    # Lambda on-demand 8x H100 SXM, per GPU; https://lambda.ai/pricing, 2025-06
    "H100-80GB": 2.99,
    # Lambda on-demand 8x A100 SXM 80GB, per GPU; https://lambda.ai/pricing, 2025-06
    "A100-80GB": 1.79,
    # Lambda on-demand 1x A10 24GB; https://lambda.ai/pricing, 2025-06
    "A10-24GB": 0.75,
    # Google Cloud g2-standard-4 (1x L4 with its vCPUs), us-central1;
    # https://cloud.google.com/compute/gpus-pricing, 2024-10
    "L4-24GB": 0.71,
    # A 2-vCPU VM (GCP e2-standard-2, us-central1), for the CPU test engine;
    # https://cloud.google.com/compute/vm-instance-pricing, 2024-10
    "cpu": 0.067,
}


def cost_usd(gpu_seconds: float, hourly_rate_usd: float) -> float:
    """GPU-seconds x (USD per GPU-hour / 3600); never negative or NaN."""
    if not (gpu_seconds > 0.0 and hourly_rate_usd > 0.0):
        return 0.0
    value = gpu_seconds * hourly_rate_usd / 3600.0
    return value if math.isfinite(value) else 0.0


def gpu_hourly_rate(
    gpu_type: str, configured_usd: float = 0.0, table: dict[str, float] | None = None
) -> float:
    """The engine's configured rate when set (> 0), else the default for its GPU type, else 0."""
    if configured_usd > 0.0:
        return configured_usd
    rates = DEFAULT_GPU_HOURLY_USD if table is None else table
    if gpu_type in rates:
        return rates[gpu_type]
    lowered = {k.lower(): v for k, v in rates.items()}
    return lowered.get(gpu_type.lower(), 0.0)


@dataclass(frozen=True, slots=True)
class CloudPrice:
    """USD per 1M tokens of one public model."""

    model: str
    input: float
    output: float
    cached_input: float | None = None
    source: str = ""
    as_of: str = ""


@dataclass(frozen=True, slots=True)
class CloudPriceTable:
    prices: dict[str, CloudPrice]
    default_reference: str | None = None
    model_references: dict[str, str] = field(default_factory=dict)
    feature_references: dict[str, str] = field(default_factory=dict)
    as_of: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> CloudPriceTable:
        """From `path`, else `$GPULEDGER_CLOUD_PRICES_FILE`, else the shipped table."""
        chosen = path if path is not None else os.environ.get(CLOUD_PRICES_ENV) or None
        if chosen is None:
            text = resources.files("sidecar.data").joinpath("cloud_prices.yaml").read_text("utf-8")
        else:
            text = Path(chosen).read_text("utf-8")
        return cls.from_mapping(yaml.safe_load(text) or {})

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> CloudPriceTable:
        prices: dict[str, CloudPrice] = {}
        for name, entry in (data.get("models") or {}).items():
            try:
                cached = entry.get("cached_input")
                price = CloudPrice(
                    model=str(name),
                    input=float(entry["input"]),
                    output=float(entry["output"]),
                    cached_input=None if cached is None else float(cached),
                    source=str(entry.get("source", "")),
                    as_of=str(entry.get("as_of", data.get("as_of", ""))),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"cloud price table: bad entry for model {name!r}: {exc}") from exc
            if min(price.input, price.output, price.cached_input or 0.0) < 0.0:
                raise ValueError(f"cloud price table: negative price for model {name!r}")
            prices[str(name)] = price
        refs = data.get("references") or {}
        table = cls(
            prices=prices,
            default_reference=refs.get("default"),
            model_references={str(k): str(v) for k, v in (refs.get("models") or {}).items()},
            feature_references={str(k): str(v) for k, v in (refs.get("features") or {}).items()},
            as_of=str(data.get("as_of", "")),
        )
        for ref in table._all_references():
            if ref not in prices:
                raise ValueError(f"cloud price table: reference {ref!r} has no price")
        return table

    def _all_references(self) -> list[str]:
        refs = [*self.model_references.values(), *self.feature_references.values()]
        return refs if self.default_reference is None else [*refs, self.default_reference]

    def reference_for(self, model: str, feature: str | None = None) -> str | None:
        """The public model a self-hosted model/feature is compared with (feature wins)."""
        if feature is not None and feature in self.feature_references:
            return self.feature_references[feature]
        return self.model_references.get(model, self.default_reference)

    def cloud_cost_usd(
        self,
        reference_model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
    ) -> float:
        """What the tokens cost at the reference's list price. `cached_input_tokens` is the part
        of `input_tokens` served from a prompt cache (OpenAI's usage convention)."""
        price = self.prices.get(reference_model)
        if price is None:
            raise KeyError(f"no cloud price for {reference_model!r}")
        inputs = max(0, input_tokens)
        cached = min(max(0, cached_input_tokens), inputs)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        usd = (
            (inputs - cached) * price.input
            + cached * cached_rate
            + max(0, output_tokens) * price.output
        )
        return usd / 1_000_000.0

    def cost_for(
        self,
        model: str,
        feature: str | None,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
    ) -> float | None:
        """Cloud-equivalent cost of a usage record, or None when no reference applies."""
        ref = self.reference_for(model, feature)
        if ref is None:
            return None
        return self.cloud_cost_usd(ref, input_tokens, output_tokens, cached_input_tokens)
