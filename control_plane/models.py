"""SQLAlchemy models of the ledger (typed, one module: the schema is small and read as a whole).

Money and GPU-seconds are floats: they are measurements, not balances owed to anyone, and the
rollups add thousands of them; the lease math keeps its own margin (see budgets/leases.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.db import Base, UTCDateTime, utcnow


class PolicyState(Base):
    """One row: the policy revision, bumped in the same transaction as any admin change."""

    __tablename__ = "policy_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)


class Feature(Base):
    __tablename__ = "features"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), default="")
    default_max_tokens: Mapped[int] = mapped_column(Integer, default=256)
    max_tokens_cap: Mapped[int] = mapped_column(Integer, default=1024)
    over_cap: Mapped[str] = mapped_column(String(16), default="reject")
    max_prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    slo_ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    slo_e2e_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    fallback_route: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(128), default="")
    # Only the SHA-256 of the secret is stored; `prefix` (first 8 characters) lets people recognise it.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    features: Mapped[list[str]] = mapped_column(JSON)
    default_feature: Mapped[str] = mapped_column(String(64))
    models: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Budget(Base):
    __tablename__ = "budgets"
    feature: Mapped[str] = mapped_column(
        ForeignKey("features.name", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(16))  # day | week | month | rolling
    rolling_hours: Mapped[int | None] = mapped_column(Integer, nullable=True)
    limit_gpu_seconds: Mapped[float] = mapped_column(Float)
    soft_threshold_pct: Mapped[float] = mapped_column(Float, default=80.0)
    hard_action: Mapped[str] = mapped_column(String(16), default="reject")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RateLimitRule(Base):
    __tablename__ = "rate_limits"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # key | feature | key_feature
    key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=True
    )
    feature: Mapped[str | None] = mapped_column(
        ForeignKey("features.name", ondelete="CASCADE"), nullable=True
    )
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrent_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gpu_seconds_per_minute: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Engine(Base):
    __tablename__ = "engines"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gpu_type: Mapped[str] = mapped_column(String(64), default="cpu")
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    hourly_rate_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prefill_cost_factor: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_num_seqs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UsageRecordRow(Base):
    """Raw usage, one row per request; the primary key is the sidecar's UUIDv7 (idempotency).

    Strings are unbounded here: a batch must never fail on a long label, or the sidecar's spool
    would retry it forever.
    """

    __tablename__ = "usage_records"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    key_id: Mapped[str | None] = mapped_column(String, nullable=True)
    feature: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    backend: Mapped[str] = mapped_column(String)
    upstream: Mapped[str] = mapped_column(String)
    sidecar_id: Mapped[str] = mapped_column(String)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    e2e_ms: Mapped[float] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(Integer)
    cached_input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String, nullable=True)
    status: Mapped[str] = mapped_column(String)
    guardrail_actions: Mapped[list[Any]] = mapped_column(JSON)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)
    cloud_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    trace_id: Mapped[str | None] = mapped_column(String, nullable=True)
    prompt_opening: Mapped[str | None] = mapped_column(String, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_usage_records_started_at", "started_at"),
        Index("ix_usage_records_feature_started_at", "feature", "started_at"),
    )


class UsageRollup(Base):
    """Per-minute sums per feature / model / key / engine, maintained on ingest.

    Reports and budget checks read these, never the raw records. `key_id` is "" for keyless usage
    so it can sit in the primary key.
    """

    __tablename__ = "usage_rollups"
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    feature: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    key_id: Mapped[str] = mapped_column(String, primary_key=True)
    upstream: Mapped[str] = mapped_column(String, primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    cloud_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    # The sidecars' prefix advisor (UsageRecord.prompt_opening*): the prefix-cache report.
    opening_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    new_openings: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    wasted_prefill_gpu_seconds: Mapped[float] = mapped_column(
        Float, default=0.0, server_default="0"
    )

    __table_args__ = (Index("ix_usage_rollups_feature_minute", "feature", "minute"),)


class LatencyRollup(Base):
    """Per-minute latency histograms per feature / model, maintained on ingest beside the rollups.

    One row per non-empty bucket: `metric` is ttft | itl | e2e, `le_ms` the bucket's upper bound
    (Prometheus' `le`; infinity for the overflow bucket). Counts are added with one upsert per row,
    which is atomic on both dialects; a JSON array of counts would need a read-modify-write.
    The bounds are in control_plane/usage/latency.py.
    """

    __tablename__ = "latency_rollups"
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    feature: Mapped[str] = mapped_column(String, primary_key=True)
    model: Mapped[str] = mapped_column(String, primary_key=True)
    metric: Mapped[str] = mapped_column(String(8), primary_key=True)
    le_ms: Mapped[float] = mapped_column(Float, primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_latency_rollups_feature_minute", "feature", "minute"),)


class Lease(Base):
    """The outstanding budget lease of one sidecar for one feature (at most one)."""

    __tablename__ = "leases"
    sidecar_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    feature: Mapped[str] = mapped_column(
        ForeignKey("features.name", ondelete="CASCADE"), primary_key=True
    )
    granted_gpu_seconds: Mapped[float] = mapped_column(Float)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # GPU-seconds per second, exponentially smoothed over the sidecar's settlements.
    burn_rate: Mapped[float] = mapped_column(Float, default=0.0)


class Settlement(Base):
    """GPU-seconds sidecars reported as charged, per feature per minute (the timely view of spend;
    ingested usage is the lagging one)."""

    __tablename__ = "settlements"
    feature: Mapped[str] = mapped_column(
        ForeignKey("features.name", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature: Mapped[str] = mapped_column(ForeignKey("features.name", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # soft_threshold | budget_exhausted
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    used_gpu_seconds: Mapped[float] = mapped_column(Float)
    limit_gpu_seconds: Mapped[float] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("uq_alerts_feature_kind_period", "feature", "kind", "period_start", unique=True),
    )
