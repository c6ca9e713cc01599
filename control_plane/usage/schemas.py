"""Usage query schemas (the ingest body is gpuledger.contracts.UsageBatch)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class UsageRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    key_id: str | None
    feature: str
    model: str
    backend: str
    upstream: str
    sidecar_id: str
    started_at: datetime
    ttft_ms: float | None
    e2e_ms: float
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    finish_reason: str | None
    status: str
    guardrail_actions: list[Any]
    gpu_seconds: float
    cost_usd: float
    cloud_cost_usd: float | None
    trace_id: str | None
    received_at: datetime


class UsageTotals(BaseModel):
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    cloud_cost_usd: float = 0.0


class UsageSummary(BaseModel):
    start: datetime | None
    end: datetime | None
    feature: str | None
    totals: UsageTotals
