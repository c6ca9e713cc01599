"""Sidecar settings, read from the environment (prefix `GPULEDGER_`).

Other components add their own fields here (one block each, with a comment naming the owner).
"""

from __future__ import annotations

from pathlib import Path

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
    # Sent to vLLM when it runs with `--api-key` (never the client's own key).
    upstream_api_key: str | None = None
    connect_timeout_s: float = 5.0
    # Longest silence between two upstream reads (a stalled engine), not the whole request.
    read_timeout_s: float = 300.0
    upstream_max_connections: int = 1024

    # --- request limits ------------------------------------------------------------------
    max_body_bytes: int = 1024 * 1024

    # --- policy ----------------------------------------------------------------------------
    # Standalone mode: a YAML PolicySnapshot. Otherwise the control plane syncs it (policy_sync).
    policy_file: Path | None = None
    state_dir: Path = Path("./data/sidecar")
    control_plane_url: str | None = None
    control_plane_token: str | None = None

    # --- metering --------------------------------------------------------------------------
    usage_jsonl: Path | None = None

    # --- tracing ---------------------------------------------------------------------------
    tracing_enabled: bool = True
    service_name: str = "gpuledger-sidecar"
