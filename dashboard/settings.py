"""Dashboard settings (env prefix `GPULEDGER_`).

The admin token and control-plane URL are the same variables the rest of the stack uses
(`GPULEDGER_CONTROL_PLANE_URL`, `GPULEDGER_ADMIN_TOKEN`); the dashboard's own knobs are prefixed
`GPULEDGER_DASHBOARD_` so they never collide with the control plane's `GPULEDGER_HOST`/`PORT`.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname: assume it is reachable from elsewhere
        return False


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPULEDGER_", extra="ignore")

    control_plane_url: str = "http://127.0.0.1:8090"
    admin_token: SecretStr = SecretStr("")
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(default=8501, ge=1, le=65535)
    # When set (or when the dashboard binds beyond loopback) every session must enter it first.
    # Exposed without a password, the admin token itself is asked for: whoever can read the
    # dashboard can read everything the admin token can.
    dashboard_password: SecretStr = SecretStr("")
    # Only shown in the "send your first request" hint of the empty states.
    dashboard_sidecar_url: str = "http://127.0.0.1:8080"
    # Optional: where the engine gauges (KV-cache, queue) and the sidecars' latency histograms
    # and firing alerts come from. Empty: the Latency page says what is missing instead.
    dashboard_prometheus_url: str = ""
    dashboard_refresh_seconds: float = Field(default=30.0, ge=0, description="0: no auto-refresh")
    dashboard_timeout_seconds: float = Field(default=10.0, gt=0)

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.dashboard_host)

    @property
    def gate_secret(self) -> str | None:
        """What a visitor must type, or None when no gate applies."""
        password = self.dashboard_password.get_secret_value()
        if password:
            return password
        if self.exposed:
            return self.admin_token.get_secret_value() or ""
        return None
