"""The `gpuledger` control-plane commands: server, migrations, and admin chores over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory

from control_plane.db import MIGRATIONS_DIR
from gpuledger.cli import main
from tests.conftest import free_port
from tests.control_plane_support import (
    ADMIN_TOKEN,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    sqlite_url,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]


def test_db_upgrade_and_downgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPULEDGER_DATABASE_URL", sqlite_url(tmp_path))
    assert main(["db", "upgrade"]) == 0
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert f"revision {head}" in capsys.readouterr().out
    assert main(["db", "downgrade", "base"]) == 0
    assert "revision base" in capsys.readouterr().out


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_admin_chores(
    control_plane: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPULEDGER_CONTROL_PLANE_URL", control_plane)
    monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", ADMIN_TOKEN)
    assert main(["features", "create", "chat", "--owner", "web", "--over-cap", "clamp"]) == 0
    assert main(["keys", "create", "--name", "web-prod", "--feature", "chat"]) == 0
    out = capsys.readouterr().out
    assert "secret: glk_" in out
    assert main(["budgets", "set", "--feature", "chat", "--period", "day", "--gpu-hours", "2"]) == 0
    capsys.readouterr()
    post_usage(control_plane, [make_record(feature="chat", gpu_seconds=720)])
    assert main(["spend"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("chat"))
    assert line.split()[1:5] == ["day", "0.200", "2.000", "10.0%"]

    assert main(["budgets", "set", "--feature", "nope", "--gpu-hours", "1"]) == 2
    assert "404 feature_not_found" in capsys.readouterr().err
    monkeypatch.setenv("GPULEDGER_ADMIN_TOKEN", "wrong")
    assert main(["spend"]) == 2
    assert "401 unauthorized" in capsys.readouterr().err


def test_cli_needs_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GPULEDGER_ADMIN_TOKEN", raising=False)
    assert main(["spend"]) == 2
    assert "GPULEDGER_ADMIN_TOKEN" in capsys.readouterr().err


def test_control_plane_command_serves(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, GPULEDGER_DATABASE_URL=sqlite_url(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "control-plane", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
