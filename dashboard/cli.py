"""`gpuledger dashboard`: run the Streamlit app (replaces this process with `streamlit run`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

APP = Path(__file__).with_name("app.py")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("dashboard", help="run the Streamlit dashboard (default 127.0.0.1:8501)")
    p.add_argument("--host", default=None, help="bind address (GPULEDGER_DASHBOARD_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (GPULEDGER_DASHBOARD_PORT)")
    p.set_defaults(func=_run)


def streamlit_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        # The app reads settings from the environment; Streamlit's own file watcher is for
        # development only.
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
    ]


def _run(args: argparse.Namespace) -> int:
    from dashboard.settings import DashboardSettings
    from gpuledger.cli import CliError

    settings = DashboardSettings()
    host = args.host or settings.dashboard_host
    port = args.port or settings.dashboard_port
    # The app decides whether to show the password gate from the host it is exposed on.
    env = {**os.environ, "GPULEDGER_DASHBOARD_HOST": host, "GPULEDGER_DASHBOARD_PORT": str(port)}
    if DashboardSettings(dashboard_host=host).gate_secret == "":
        raise CliError(
            f"--host {host} exposes the dashboard beyond this machine: set "
            "GPULEDGER_DASHBOARD_PASSWORD (or GPULEDGER_ADMIN_TOKEN, which it then asks for)"
        )
    command = streamlit_command(host, port)
    sys.stdout.flush()
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process
