"""Prefix-cache report: which features keep changing the start of their prompts."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class PrefixCacheRow(BaseModel):
    feature: str
    requests: int = Field(description="requests whose opening the sidecar hashed")
    distinct_openings: int = Field(description="distinct hashes of the prompt's first bytes")
    unstable_ratio: float = Field(description="distinct_openings / requests (1: every one differs)")
    unstable: bool = Field(description="enough requests and unstable_ratio >= the threshold")
    one_off_requests: int = Field(description="requests whose opening no other request shared")
    observed_cache_hit_ratio: float | None = Field(
        description="cached / input tokens as vLLM reported them; null when it reported none"
    )
    wasted_prefill_gpu_seconds: float = Field(
        description="upper bound: whole KV blocks of the one-off requests' prompts x the "
        "prefill cost per token, had their static content come first"
    )
    wasted_prefill_usd: float = Field(description="at the feature's own cost per GPU-second")
    advice: str


class PrefixCacheReport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "start": "2026-11-26T00:00:00Z",
                    "end": "2026-11-27T00:00:00Z",
                    "block_tokens": 16,
                    "prefill_gpu_seconds_per_token": 0.0001,
                    "rows": [
                        {
                            "feature": "support-chat",
                            "requests": 1200,
                            "distinct_openings": 1187,
                            "unstable_ratio": 0.989,
                            "unstable": True,
                            "one_off_requests": 1180,
                            "observed_cache_hit_ratio": 0.02,
                            "wasted_prefill_gpu_seconds": 141.6,
                            "wasted_prefill_usd": 0.098,
                            "advice": "Prompt openings keep changing: move static content "
                            "(system prompt, instructions) first and per-request values "
                            "(dates, names) last.",
                        }
                    ],
                }
            ]
        }
    )

    start: datetime
    end: datetime
    block_tokens: int
    prefill_gpu_seconds_per_token: float
    rows: list[PrefixCacheRow] = Field(description="most wasteful first")
