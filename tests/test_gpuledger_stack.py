"""`make run`'s supervisor (`gpuledger stack`) end to end, against the real vLLM engine: it starts
the control plane, a sidecar syncing policy from it and the dashboard, bootstraps a dev key, and
a request through the sidecar lands in the ledger; Ctrl-C stops everything; a restart reuses the
data (same key, nothing created twice)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parent.parent


def _start(
    engine_url: str, data: Path, ports: dict[str, int], *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "stack", "--engine-url", engine_url,
         "--data-dir", str(data), *(f"--{name}-port={port}" for name, port in ports.items()),
         *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _wait_running(proc: subprocess.Popen[str], timeout_s: float = 240) -> str:
    """The stack's output up to its banner's last line."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith("Ctrl-C stops everything"):
            return "".join(seen)
    proc.kill()
    raise AssertionError("the stack did not come up:\n" + "".join(seen))


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
    out, _ = proc.communicate(timeout=90)
    return out


def _free(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_stack_serves_meters_and_stops(engine_url: str, tmp_path: Path) -> None:
    ports = {"sidecar": free_port(), "control-plane": free_port(), "dashboard": free_port()}
    data = tmp_path / "data"
    proc = _start(engine_url, data, ports)
    try:
        banner = _wait_running(proc)
        sidecar = f"http://127.0.0.1:{ports['sidecar']}"
        assert f"{sidecar}/v1" in banner and "new dev key (shown once): glk_" in banner
        secret = (data / "dev-key").read_text().strip()
        assert secret in banner  # shown once, here

        client = openai.OpenAI(base_url=f"{sidecar}/v1", api_key=secret, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        request_id = raw.headers["x-gpuledger-request-id"]
        assert raw.parse().usage is not None

        admin = json.loads((data / "stack-secrets.json").read_text())["admin_token"]
        cp = httpx.Client(
            base_url=f"http://127.0.0.1:{ports['control-plane']}",
            headers={"Authorization": f"Bearer {admin}"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # shipped from the sidecar's spool
            items = cp.get("/api/v1/usage/records", params={"limit": 100}).json()["items"]
            if any(r["id"] == request_id for r in items):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the request's usage record never reached the control plane")
        dashboard = httpx.get(f"http://127.0.0.1:{ports['dashboard']}/_stcore/health", timeout=5)
        assert dashboard.status_code == 200
    finally:
        out = _ctrl_c(proc)
    assert proc.returncode == 0, out
    assert all(_free(port) for port in ports.values())

    # Again on the same data: nothing is created twice and the key still works.
    proc = _start(engine_url, data, ports, "--no-dashboard")
    try:
        banner = _wait_running(proc)
        assert "new dev key" not in banner and "dev key: $(cat" in banner
        client = openai.OpenAI(base_url=f"{sidecar}/v1", api_key=secret, max_retries=0)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage is not None
        keys = cp.get("/api/v1/keys").json()["items"]
        assert [k["name"] for k in keys] == ["dev"]
    finally:
        _ctrl_c(proc)
    assert proc.returncode == 0


def test_stack_refuses_ports_in_use(engine_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"sidecar": port, "control-plane": free_port(), "dashboard": free_port()}
        proc = _start(engine_url, tmp_path / "data", ports)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"ports already in use: http://127.0.0.1:{port}/health" in out
