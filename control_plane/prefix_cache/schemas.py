"""Prefix-cache report: which features keep changing the start of their prompts."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class PrefixCacheRow(BaseModel):
    feature: str
    requests: int = Field(description="requests whose opening a sidecar's prefix advisor hashed")
    new_openings: int = Field(
        description="of those, openings their sidecar had not seen among the feature's recent "
        "requests (the last 200 per feature)"
    )
    unstable_ratio: float = Field(description="new_openings / requests (1: every one differs)")
    unstable: bool = Field(description="enough requests and unstable_ratio >= the threshold")
    observed_cache_hit_ratio: float | None = Field(
        description="cached / input tokens as vLLM reported them; null when it reported none"
    )
    wasted_prefill_gpu_seconds: float = Field(
        description="the sidecars' upper-bound estimate: whole KV blocks of the prompts whose "
        "opening was new, while the feature was unstable, x the prefill cost per token"
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
                    "rows": [
                        {
                            "feature": "support-chat",
                            "requests": 1200,
                            "new_openings": 1187,
                            "unstable_ratio": 0.9892,
                            "unstable": True,
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
    rows: list[PrefixCacheRow] = Field(description="most wasteful first")
