"""Report schemas: the contract the dashboard reads. Keep changes additive.

All reports are computed from the per-minute rollups (minute resolution on `start`/`end`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

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
