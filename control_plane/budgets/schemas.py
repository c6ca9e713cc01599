"""Budget API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Period = Literal["day", "week", "month", "rolling"]
HardAction = Literal["reject", "escalate", "alert_only"]


class BudgetIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "period": "month",
                    "gpu_hours": 10,
                    "soft_threshold_pct": 80,
                    "hard_action": "reject",
                },
                {
                    "period": "rolling",
                    "rolling_hours": 24,
                    "gpu_hours": 2,
                    "hard_action": "escalate",
                },
            ]
        }
    )

    period: Period = "month"
    rolling_hours: int | None = Field(default=None, ge=1, le=24 * 90)
    gpu_hours: float = Field(gt=0, description="limit for one period, in GPU-hours")
    soft_threshold_pct: float = Field(default=80.0, gt=0, le=100)
    hard_action: HardAction = "reject"

    @model_validator(mode="after")
    def _rolling_needs_hours(self) -> BudgetIn:
        if self.period == "rolling" and self.rolling_hours is None:
            raise ValueError("period 'rolling' needs rolling_hours")
        if self.period != "rolling" and self.rolling_hours is not None:
            raise ValueError("rolling_hours only applies to period 'rolling'")
        return self


class BudgetOut(BaseModel):
    feature: str
    period: Period
    rolling_hours: int | None
    limit_gpu_seconds: float
    limit_gpu_hours: float
    soft_threshold_pct: float
    hard_action: HardAction
    period_start: datetime
    period_end: datetime
    used_gpu_seconds: float = Field(
        description="max(settled by sidecars, ingested usage) in the current period"
    )
    outstanding_lease_gpu_seconds: float
    remaining_gpu_seconds: float = Field(description="limit - used - outstanding leases, >= 0")
    used_ratio: float
    status: Literal["ok", "soft_threshold", "exhausted"]
