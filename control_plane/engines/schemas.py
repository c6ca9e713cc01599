"""Engine schemas: where requests go and what the GPUs behind them cost."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class EngineIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "http://10.0.0.5:8000",
                    "model": "llama-3.1-8b",
                    "gpu_type": "H100",
                    "gpus": 1,
                    "hourly_rate_usd": 2.49,
                    "max_num_seqs": 256,
                }
            ]
        }
    )
    url: str = Field(min_length=1, max_length=512)
    model: str | None = Field(default=None, max_length=128)
    gpu_type: str = Field(default="cpu", max_length=64)
    gpus: int = Field(default=1, ge=1)
    hourly_rate_usd: float = Field(default=0.0, ge=0, description="for all its GPUs, per hour")
    prefill_cost_factor: float | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        description="the engine's --max-num-seqs; attribution then leaves its queue time unbilled",
    )


class EngineOut(EngineIn):
    model_config = ConfigDict(from_attributes=True)
    name: str
    created_at: datetime
