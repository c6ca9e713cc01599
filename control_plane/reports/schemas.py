"""Report schemas: the contract the dashboard reads. Keep changes additive.

All reports are computed from the per-minute rollups (minute resolution on `start`/`end`); the
latency report from the per-minute latency histograms beside them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from control_plane.usage.latency import BOUNDS_MS

CostGroup = Literal["feature", "model", "key", "engine", "day"]


class CostRow(BaseModel):
    group: str = Field(description='feature / model / key id / engine / "YYYY-MM-DD"; "" = no key')
    requests: int
    errors: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    gpu_seconds: float = Field(description="attributed GPU-seconds")
    gpu_hours: float
    cost_usd: float = Field(description="self-hosted cost attributed by the sidecars")
    cloud_cost_usd: float = Field(description="what the same tokens would cost on the cloud API")
    savings_usd: float = Field(description="cloud_cost_usd - cost_usd (negative: cloud is cheaper)")


class CostReport(BaseModel):
    group_by: CostGroup
    start: datetime | None
    end: datetime | None
    feature: str | None = None
    rows: list[CostRow]
    totals: CostRow


class EngineUtilization(BaseModel):
    engine: str
    registered: bool = Field(description="false: seen in usage but not configured as an engine")
    gpu_type: str | None
    gpus: int
    hourly_rate_usd: float = Field(description="for all the engine's GPUs")
    window_seconds: float
    capacity_gpu_seconds: float = Field(description="gpus x window (assumes up the whole window)")
    attributed_gpu_seconds: float = Field(description="busy: sum of per-request attribution")
    idle_gpu_seconds: float = Field(description="capacity - attributed, >= 0")
    utilization: float = Field(description="attributed / capacity")
    engine_cost_usd: float = Field(description="hourly rate x window hours")
    attributed_cost_usd: float
    cloud_cost_usd: float
    cloud_usd_per_gpu_second: float | None = Field(
        description="cloud-equivalent price of one attributed GPU-second of this engine's work"
    )
    break_even_utilization: float | None = Field(
        description="utilization at which the engine costs the same as sending its work to the "
        "cloud; above it self-hosting is cheaper. None without cloud prices."
    )
    savings_usd: float = Field(description="cloud_cost_usd - engine_cost_usd over the window")


class UtilizationReport(BaseModel):
    start: datetime
    end: datetime
    engines: list[EngineUtilization]


# --- latency ----------------------------------------------------------------------------------

LatencyGroup = Literal["feature", "model"]


class Percentiles(BaseModel):
    count: int = Field(description="requests with this measurement")
    p50_ms: float | None = Field(description="None when count is 0")
    p95_ms: float | None
    p99_ms: float | None


class OverSlo(BaseModel):
    """Share of requests slower than the SLO. Exact only when the SLO is a bucket bound;
    otherwise the requests in the bucket containing the SLO may be on either side of it."""

    estimate: float = Field(description="interpolated linearly inside the SLO's bucket")
    at_least: float = Field(description="share in buckets wholly above the SLO")
    at_most: float = Field(description="at_least + the share in the SLO's own bucket")
    exact: bool = Field(
        description="at_least == at_most: no request sits in a bucket straddling the SLO "
        "(always so when the SLO is a bucket bound)"
    )


class LatencyRow(BaseModel):
    group: str = Field(description='feature or model; "total" for the totals row')
    requests: int = Field(description="successful requests (those with an e2e time)")
    ttft: Percentiles = Field(description="time to first token")
    itl: Percentiles = Field(
        description="inter-token latency: each request's mean gap, "
        "(e2e - TTFT) / (output tokens - 1)"
    )
    e2e: Percentiles = Field(description="end-to-end time")
    slo_ttft_ms: float | None = Field(
        description="the feature's SLO; only when the row is one feature's requests "
        "(group_by=feature, or a feature filter)"
    )
    slo_e2e_ms: float | None
    ttft_over_slo: OverSlo | None
    e2e_over_slo: OverSlo | None


_LATENCY_ROW_EXAMPLE: dict[str, JsonValue] = {
    "group": "support-bot",
    "requests": 18240,
    "ttft": {"count": 18240, "p50_ms": 84.2, "p95_ms": 412.5, "p99_ms": 1380.0},
    "itl": {"count": 17995, "p50_ms": 11.8, "p95_ms": 27.1, "p99_ms": 46.3},
    "e2e": {"count": 18240, "p50_ms": 1210.0, "p95_ms": 4150.0, "p99_ms": 7020.0},
    "slo_ttft_ms": 500.0,
    "slo_e2e_ms": None,
    "ttft_over_slo": {"estimate": 0.041, "at_least": 0.041, "at_most": 0.041, "exact": True},
    "e2e_over_slo": None,
}


class LatencyReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "group_by": "feature",
                    "start": "2026-11-27T00:00:00Z",
                    "end": "2026-11-28T00:00:00Z",
                    "feature": None,
                    "model": None,
                    "bucket_bounds_ms": list(BOUNDS_MS),
                    "rows": [_LATENCY_ROW_EXAMPLE],
                    "totals": {
                        **_LATENCY_ROW_EXAMPLE,
                        "group": "total",
                        "slo_ttft_ms": None,
                        "ttft_over_slo": None,
                    },
                }
            ]
        }
    )
    group_by: LatencyGroup
    start: datetime | None
    end: datetime | None
    feature: str | None = None
    model: str | None = None
    bucket_bounds_ms: list[float] = Field(
        description="upper bounds of the histogram buckets (plus an overflow bucket above the "
        "last); a percentile is interpolated inside its bucket, so it is accurate to one bucket"
    )
    rows: list[LatencyRow]
    totals: LatencyRow
