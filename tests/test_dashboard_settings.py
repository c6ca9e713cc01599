"""Dashboard settings: environment names and when the password gate applies."""

from __future__ import annotations

import pytest

from dashboard.settings import DashboardSettings, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("10.1.2.3", False), ("dashboard.internal", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_reads_the_stack_wide_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_URL", "http://cp:8090")
    monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", "s3cr3t-admin")
    monkeypatch.setenv("GPULEDGER_DASHBOARD_REFRESH_SECONDS", "0")
    # The control plane's own host/port must not leak into the dashboard's.
    monkeypatch.setenv("GPULEDGER_HOST", "0.0.0.0")
    monkeypatch.setenv("GPULEDGER_PORT", "8090")
    s = DashboardSettings()
    assert s.control_plane_url == "http://cp:8090"
    assert s.admin_token.get_secret_value() == "s3cr3t-admin"
    assert "s3cr3t" not in repr(s)
    assert s.dashboard_refresh_seconds == 0
    assert (s.dashboard_host, s.dashboard_port) == ("127.0.0.1", 8501)


def test_gate_on_loopback_only_with_a_password() -> None:
    assert DashboardSettings(admin_token="adm").gate_secret is None
    assert DashboardSettings(dashboard_password="pw").gate_secret == "pw"


def test_gate_when_exposed_falls_back_to_the_admin_token() -> None:
    exposed = DashboardSettings(dashboard_host="0.0.0.0", admin_token="adm")
    assert exposed.exposed
    assert exposed.gate_secret == "adm"
    assert DashboardSettings(dashboard_host="0.0.0.0", dashboard_password="pw").gate_secret == "pw"
    # Exposed with nothing to ask for: "" tells the app and the CLI to refuse.
    assert DashboardSettings(dashboard_host="0.0.0.0", admin_token="").gate_secret == ""
