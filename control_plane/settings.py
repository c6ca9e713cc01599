"""Control plane settings (env prefix `GPULEDGER_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPULEDGER_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./data/gpuledger.db"
    # Comma-separated bearer tokens. Admin and sidecar credentials are distinct sets: a sidecar
    # token can ship usage and read policy, never change it.
    admin_tokens: str = ""
    sidecar_tokens: str = ""
    host: str = "127.0.0.1"
    port: int = 8090
    migrate_on_start: bool = True
    sqlite_busy_timeout_ms: int = 30_000
    # A server span per request (W3C traceparent continued) and a span per ingested usage record
    # in the record's trace; exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    tracing_enabled: bool = True

    # Budget lease sizing: each sidecar gets max(min_lease, burn_rate x ttl x headroom), capped by
    # max_lease and by a share of what remains, so one sidecar cannot starve the others.
    lease_ttl_seconds: float = Field(default=30.0, gt=0)
    lease_min_gpu_seconds: float = Field(default=1.0, ge=0)
    lease_max_gpu_seconds: float = Field(default=600.0, gt=0)
    lease_burn_headroom: float = Field(default=2.0, ge=1)
    lease_max_share: float = Field(default=0.5, gt=0, le=1)
    # An expired lease is reclaimed only after this grace: a sidecar may still spend the last of it
    # while it cannot reach us (its fail-open staleness bound must not exceed ttl + grace).
    lease_reclaim_grace_seconds: float = Field(default=30.0, ge=0)
    # The policy version changes when a budget's used GPU-seconds cross a bucket of this size, so
    # sidecars see fresh budget state without a new ETag on every request.
    policy_budget_bucket_gpu_seconds: float = Field(default=60.0, gt=0)

    # Prefix-cache report: a feature is unstable with at least this many hashed requests in the
    # window, of which at least this share had an opening new on their sidecar.
    prefix_min_requests: int = Field(default=20, ge=1)
    prefix_unstable_threshold: float = Field(default=0.5, gt=0, le=1)

    @property
    def admin_token_list(self) -> list[str]:
        return _split(self.admin_tokens)

    @property
    def sidecar_token_list(self) -> list[str]:
        return _split(self.sidecar_tokens)
