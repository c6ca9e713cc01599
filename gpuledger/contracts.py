"""Wire contracts shared by the sidecar, the control plane and the dashboard.

These are the only types that cross a process boundary: a usage record (sidecar -> control plane),
the policy snapshot (control plane -> sidecar, or a standalone YAML file) and the budget lease
exchange. Changing a field here is a protocol change: keep it additive.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KEY_PREFIX = "glk_"


def hash_key(secret: str) -> str:
    """SHA-256 of an API key secret.

    Keys are 32 random bytes, so a fast unsalted hash is safe (as GitHub and LiteLLM do) and lets
    the sidecar look a key up by its hash without ever storing the secret.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- usage ---------------------------------------------------------------------------------

UsageStatus = str  # "ok" | "upstream_error" | "cancelled" | "rejected:<reason>"


class UsageRecord(_Wire):
    id: str = Field(description="UUIDv7, minted by the sidecar; the idempotency key")
    key_id: str | None = None
    feature: str
    model: str
    backend: str = "vllm"
    upstream: str = Field(description="engine name the request went to")
    sidecar_id: str = ""
    started_at: datetime
    ttft_ms: float | None = None
    e2e_ms: float = 0.0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    status: UsageStatus = "ok"
    guardrail_actions: list[str] = Field(default_factory=list)
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    cloud_cost_usd: float | None = None
    trace_id: str | None = None
    # The sidecar's request span (16 hex), so the control plane can parent its spans on it.
    span_id: str | None = None
    # The prefix advisor's view of the prompt's opening (its first bytes): a blake2b-64 hash
    # (never the text), whether this sidecar had not seen it among the feature's recent requests,
    # and the prefill GPU-seconds the advisor estimates a changing opening wasted. The control
    # plane sums the last two in its rollups for the prefix-cache report.
    prompt_opening: str | None = None
    prompt_opening_new: bool | None = None
    wasted_prefill_gpu_seconds: float = 0.0


class UsageBatch(_Wire):
    records: list[UsageRecord] = Field(max_length=10_000)


class UsageBatchAck(_Wire):
    accepted: int
    duplicates: int


# --- policy ----------------------------------------------------------------------------------


class RateLimits(_Wire):
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    gpu_seconds_per_minute: float | None = None


class RateLimitPolicy(_Wire):
    """A limit on one scope: a key, a feature, or a key within a feature."""

    scope: Literal["key", "feature", "key_feature"]
    key_id: str | None = None
    feature: str | None = None
    limits: RateLimits


class KeyPolicy(_Wire):
    id: str
    name: str
    owner: str = ""
    key_hash: str = Field(description="hash_key(secret), hex")
    features: list[str] = Field(description="features this key may tag; the first is its default")
    default_feature: str
    models: list[str] = Field(default_factory=lambda: ["*"], description='"*" allows every model')
    enabled: bool = True
    expires_at: datetime | None = None


class FeaturePolicy(_Wire):
    name: str
    owner: str = ""
    default_max_tokens: int = 256
    max_tokens_cap: int = 1024
    over_cap: Literal["reject", "clamp"] = "reject"
    max_prompt_tokens: int | None = None
    priority: int = Field(default=0, description="higher is more important; used by load shedding")
    slo_ttft_ms: float | None = None
    slo_e2e_ms: float | None = None
    fallback_route: str | None = None


class BudgetState(_Wire):
    feature: str
    period: Literal["day", "week", "month", "rolling"]
    period_start: datetime
    period_end: datetime
    limit_gpu_seconds: float
    used_gpu_seconds: float
    soft_threshold_pct: float = 80.0
    hard_action: Literal["reject", "escalate", "alert_only"] = "reject"


class EnginePolicy(_Wire):
    name: str
    url: str
    model: str | None = None
    gpu_type: str = "cpu"
    gpus: int = 1
    hourly_rate_usd: float = 0.0
    prefill_cost_factor: float | None = None
    # vLLM's --max-num-seqs: lets attribution model its FIFO queue (queued requests aren't billed).
    max_num_seqs: int | None = Field(default=None, ge=1)


class PolicySnapshot(_Wire):
    version: str = "0"
    keys: list[KeyPolicy] = Field(default_factory=list)
    features: list[FeaturePolicy] = Field(default_factory=list)
    rate_limits: list[RateLimitPolicy] = Field(default_factory=list)
    budgets: list[BudgetState] = Field(default_factory=list)
    engines: list[EnginePolicy] = Field(default_factory=list)


# --- budget leases -----------------------------------------------------------------------------


class LeaseRequest(_Wire):
    sidecar_id: str
    feature: str
    requested_gpu_seconds: float = Field(ge=0)
    settled_gpu_seconds: float = Field(
        default=0.0, ge=0, description="charged against the previous lease since the last call"
    )


class LeaseGrant(_Wire):
    feature: str
    granted_gpu_seconds: float
    expires_at: datetime
    period_end: datetime
    exhausted: bool = False
    hard_action: Literal["reject", "escalate", "alert_only"] = "reject"
