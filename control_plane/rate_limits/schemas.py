"""Rate-limit policy schemas (limits as in gpuledger.contracts.RateLimits)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RateLimitIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"scope": "feature", "feature": "support-bot", "requests_per_minute": 600},
                {"scope": "key", "key_id": "key_0193...", "tokens_per_minute": 20000},
            ]
        }
    )
    scope: Literal["key", "feature", "key_feature"]
    key_id: str | None = None
    feature: str | None = None
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Input + output tokens. Admission reserves prompt + max_tokens; the "
        "reservation settles to the real count when the request ends.",
    )
    concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight, shared by every sidecar on the same Redis (leases that "
        "expire if a sidecar dies).",
    )
    gpu_seconds_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Attributed GPU-seconds. Admission reserves prompt + max_tokens at the "
        "feature's learned GPU-seconds per token (capped at this limit); the reservation settles "
        "to the real charge when the request ends.",
    )

    @model_validator(mode="after")
    def _scope_fields(self) -> RateLimitIn:
        need_key = self.scope in ("key", "key_feature")
        need_feature = self.scope in ("feature", "key_feature")
        if need_key != (self.key_id is not None):
            raise ValueError(f"scope {self.scope!r} {'needs' if need_key else 'forbids'} key_id")
        if need_feature != (self.feature is not None):
            raise ValueError(
                f"scope {self.scope!r} {'needs' if need_feature else 'forbids'} feature"
            )
        limits = (
            self.requests_per_minute,
            self.tokens_per_minute,
            self.concurrent_requests,
            self.gpu_seconds_per_minute,
        )
        if all(v is None for v in limits):
            raise ValueError("set at least one limit")
        return self


class RateLimitOut(RateLimitIn):
    model_config = ConfigDict(from_attributes=True)
    id: str
    created_at: datetime
