"""Feature API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FEATURE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class FeatureFields(BaseModel):
    owner: str = Field(default="", max_length=128)
    default_max_tokens: int = Field(default=256, ge=1)
    max_tokens_cap: int = Field(default=1024, ge=1)
    over_cap: Literal["reject", "clamp"] = "reject"
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    priority: int = 0
    slo_ttft_ms: float | None = Field(default=None, gt=0)
    slo_e2e_ms: float | None = Field(default=None, gt=0)
    fallback_route: str | None = Field(default=None, max_length=128)


class FeatureCreate(FeatureFields):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "support-bot",
                    "owner": "support-team",
                    "default_max_tokens": 256,
                    "max_tokens_cap": 1024,
                    "over_cap": "clamp",
                    "priority": 10,
                    "slo_ttft_ms": 500,
                }
            ]
        }
    )
    name: str = Field(pattern=FEATURE_NAME)


class FeatureUpdate(BaseModel):
    """Partial update: only the fields sent change."""

    owner: str | None = Field(default=None, max_length=128)
    default_max_tokens: int | None = Field(default=None, ge=1)
    max_tokens_cap: int | None = Field(default=None, ge=1)
    over_cap: Literal["reject", "clamp"] | None = None
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    priority: int | None = None
    slo_ttft_ms: float | None = Field(default=None, gt=0)
    slo_e2e_ms: float | None = Field(default=None, gt=0)
    fallback_route: str | None = Field(default=None, max_length=128)


class FeatureOut(FeatureFields):
    model_config = ConfigDict(from_attributes=True)
    name: str
    created_at: datetime
