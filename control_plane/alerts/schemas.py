"""Alert schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    feature: str
    kind: Literal["soft_threshold", "budget_exhausted"]
    period_start: datetime
    period_end: datetime
    used_gpu_seconds: float
    limit_gpu_seconds: float
    message: str
    created_at: datetime
    acknowledged_at: datetime | None
