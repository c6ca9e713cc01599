"""Sidecar settings, read from the environment (prefix `GPULEDGER_`).

Other components add their own fields here (one block each, with a comment naming the owner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPULEDGER_", extra="ignore")

    # --- serving ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8080
    sidecar_id: str = "sidecar-local"

    # --- upstream (vLLM) ------------------------------------------------------------------
    # Used when the policy names no engine; an engine in the policy overrides it.
    upstream_url: str = "http://127.0.0.1:8000"
    upstream_name: str = "local"
    # The default upstream's --max-num-seqs (unset: queue time is not modelled by attribution).
    upstream_max_num_seqs: int | None = None
    # Sent to vLLM when it runs with `--api-key` (never the client's own key).
    upstream_api_key: str | None = None
    connect_timeout_s: float = 5.0
    # Longest silence between two upstream reads (a stalled engine), not the whole request.
    read_timeout_s: float = 300.0
    upstream_max_connections: int = 1024
    # Idle pooled connections are dropped after this: shorter than the engine's own keep-alive
    # (vLLM/uvicorn: 5 s), so the sidecar never reuses one the engine is closing.
    upstream_keepalive_s: float = 4.0

    # --- request limits ------------------------------------------------------------------
    max_body_bytes: int = 1024 * 1024

    # --- policy ----------------------------------------------------------------------------
    # Standalone mode: a YAML PolicySnapshot. Otherwise the control plane syncs it (policy_sync).
    policy_file: Path | None = None
    state_dir: Path = Path("./data/sidecar")
    control_plane_url: str | None = None
    control_plane_token: str | None = None

    # --- rate limits (sidecar/ratelimit, issue 6) --------------------------------------------
    # Set to share rate-limit counters and concurrency slots across replicas; unset = in-process.
    redis_url: str | None = None
    # Redis unreachable: "open" falls back to the in-process limiter, "closed" answers 503.
    ratelimit_on_redis_error: Literal["open", "closed"] = "open"
    # A crashed sidecar's concurrency slots are freed after this long (renewed every third of it).
    ratelimit_lease_ttl_s: float = 30.0
    # Redis connections per sidecar (admissions queue for one), and the wait for a reply or a
    # free connection before the Redis-down policy applies.
    ratelimit_redis_connections: int = 32
    ratelimit_redis_timeout_s: float = 2.0

    # --- metering --------------------------------------------------------------------------
    usage_jsonl: Path | None = None

    # --- control-plane mode: usage spool + shipper, policy sync, budget leases (issue 5) -------
    # All active when control_plane_url and control_plane_token are set.
    spool_max_records: int = 1_000_000
    spool_max_bytes: int = 1 << 30  # payload bytes on disk
    # Spool full: "reject" new requests with 503 usage_spool_full, or "block" them (up to the
    # timeout, then 503). Records of requests already admitted are always kept.
    spool_on_full: Literal["reject", "block"] = "reject"
    spool_block_timeout_s: float = 30.0
    ship_batch_size: int = 1000  # records per POST (the control plane takes up to 10k)
    ship_backoff_cap_s: float = 30.0
    policy_sync_interval_s: float = 5.0
    # Control plane unreachable and no lease cover: admit up to the staleness bound, or refuse.
    budget_fail_mode: Literal["open", "closed"] = "open"
    budget_staleness_s: float = 300.0
    # Reservation estimate before a feature has history (learned per feature afterwards).
    budget_prior_gpu_seconds_per_token: float = 0.02

    # --- tracing ---------------------------------------------------------------------------
    tracing_enabled: bool = True
    # Fraction of root traces kept (ParentBased(TraceIdRatio): a caller's decision wins). Lower it
    # when span export's CPU matters more than seeing every request (issue 9).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    service_name: str = "gpuledger-sidecar"

    # --- soft guardrails: engine watch, load shedding, prefix advisor (issue 7) ---------------
    engine_watch_enabled: bool = True
    engine_watch_interval_s: float = 2.0
    engine_watch_window_s: float = 60.0  # P95 window for shedding
    # Opt-in: shed features with priority < cutoff while the engine is under sustained pressure.
    shedding_enabled: bool = False
    shedding_kv_threshold: float = 0.85
    shedding_sustain_s: float = 30.0
    shedding_priority_cutoff: int = 1
    shedding_ttft_slo_s: float | None = None  # used when no protected feature has a TTFT SLO
    prefix_head_bytes: int = 256
    # Prices wasted prefill for the prefix advisor (~10k prompt tokens/s on one H100 for an 8B).
    prefill_gpu_seconds_per_token: float = 1e-4
    # vLLM's KV block (16 on GPUs by default, 128 on its CPU backend); the control plane's
    # prefix-cache report reads the same variable.
    prefix_cache_block_tokens: int = 16
