"""`gpuledger dashboard`: the streamlit command line and the refusal to expose it unprotected.
(The browser test runs the real command end to end.)"""

from __future__ import annotations

import sys

import pytest

from dashboard.cli import APP, streamlit_command
from gpuledger.cli import main


def test_streamlit_command_binds_where_asked() -> None:
    cmd = streamlit_command("127.0.0.1", 8601)
    assert cmd[:5] == [sys.executable, "-m", "streamlit", "run", str(APP)]
    assert APP.exists()
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--server.port"] == "8601"
    assert flags["--server.headless"] == "true"
    assert flags["--browser.gatherUsageStats"] == "false"


def test_refuses_to_expose_the_dashboard_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GPULEDGER_DASHBOARD_PASSWORD", raising=False)
    monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", "")
    assert main(["dashboard", "--host", "0.0.0.0", "--port", "8601"]) == 2
    assert "GPULEDGER_DASHBOARD_PASSWORD" in capsys.readouterr().err
