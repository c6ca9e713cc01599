"""`gpuledger stack`: the whole local stack on embedded defaults, supervised.

Starts the vLLM engine (tiny CPU profile unless told otherwise), the control plane on SQLite, a
sidecar that syncs its policy from the control plane and ships usage to it, and the dashboard.
On first start it creates a development feature and API key through the admin API (the key's
secret is written to `data/dev-key`, mode 0600, and shown once). Ctrl-C stops everything, the
engine's whole process group included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_DIR = Path("data")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    stack = sub.add_parser("stack", help="run engine, control plane, sidecar and dashboard together")
    stack.add_argument("--profile", default="tiny-cpu", help="engine workload profile")
    stack.add_argument("--engine-url", help="use an engine already running here instead of starting one")
    stack.add_argument("--no-dashboard", action="store_true")
    stack.add_argument("--data-dir", type=Path, default=DATA_DIR)
    stack.add_argument("--sidecar-port", type=int, default=8080)
    stack.add_argument("--control-plane-port", type=int, default=8090)
    stack.add_argument("--dashboard-port", type=int, default=8501)
    stack.set_defaults(func=_run)


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self, logs: Path) -> None:
        log = (logs / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}")
            if _ok(self.health_url):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f}s ({self.health_url})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def _port_in_use(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) == 0


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _secrets(data: Path) -> dict[str, str]:
    """Admin and sidecar tokens for the local stack, generated once and kept in data/."""
    path = data / "stack-secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    values = {
        "admin_token": "gla_" + secrets.token_urlsafe(24),
        "sidecar_token": "gls_" + secrets.token_urlsafe(24),
    }
    path.write_text(json.dumps(values))
    path.chmod(0o600)
    return values


def _api(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def bootstrap(control_plane: str, admin_token: str, data: Path, engine_url: str, model: str) -> str | None:
    """Create the dev features, engine and key once; returns the new key's secret (shown once)."""
    features = [
        {"name": "default", "owner": "platform", "default_max_tokens": 128, "max_tokens_cap": 512,
         "over_cap": "reject", "priority": 10},
        {"name": "chat", "owner": "platform", "default_max_tokens": 128, "max_tokens_cap": 256,
         "over_cap": "clamp", "priority": 5, "slo_ttft_ms": 1000},
    ]
    for feature in features:
        status, _ = _api(control_plane, admin_token, "POST", "/api/v1/features", feature)
        if status not in (200, 201, 409):
            raise RuntimeError(f"creating feature {feature['name']} failed with HTTP {status}")
    # max_num_seqs: the tiny-cpu profile's, so attribution leaves vLLM's queue time unbilled.
    engine = {"url": engine_url, "model": model, "gpu_type": "cpu", "gpus": 1, "hourly_rate_usd": 0.10,
              "max_num_seqs": 16}
    status, _ = _api(control_plane, admin_token, "PUT", "/api/v1/engines/local", engine)
    if status not in (200, 201):
        raise RuntimeError(f"registering the engine failed with HTTP {status}")
    status, _ = _api(control_plane, admin_token, "GET", "/api/v1/budgets/default")
    if status == 404:  # a small monthly budget, so the dashboard's budget views have something to show
        budget = {"period": "month", "gpu_hours": 1.0, "soft_threshold_pct": 80, "hard_action": "reject"}
        status, _ = _api(control_plane, admin_token, "PUT", "/api/v1/budgets/default", budget)
        if status not in (200, 201):
            raise RuntimeError(f"creating the dev budget failed with HTTP {status}")
    key_file = data / "dev-key"
    if key_file.exists():
        return None
    status, body = _api(
        control_plane, admin_token, "POST", "/api/v1/keys",
        {"name": "dev", "owner": "local", "features": ["default", "chat"], "models": ["*"]},
    )
    if status not in (200, 201):
        raise RuntimeError(f"creating the dev key failed with HTTP {status}")
    secret: str = body["secret"]
    key_file.write_text(secret + "\n")
    key_file.chmod(0o600)
    return secret


def _run(args: argparse.Namespace) -> int:
    data: Path = args.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tokens = _secrets(data)
    exe = [sys.executable, "-m", "gpuledger.cli"]
    engine_url = args.engine_url or "http://127.0.0.1:8000"
    control_plane = f"http://127.0.0.1:{args.control_plane_port}"
    sidecar_url = f"http://127.0.0.1:{args.sidecar_port}"
    dashboard_url = f"http://127.0.0.1:{args.dashboard_port}"
    common = {"GPULEDGER_CONTROL_PLANE_URL": control_plane}

    services: list[Service] = []
    if not args.engine_url:
        services.append(Service("engine", [*exe, "engine", "start", "--profile", args.profile],
                                f"{engine_url}/health"))
    services.append(Service(
        "control-plane",
        [*exe, "control-plane", "--port", str(args.control_plane_port)],
        f"{control_plane}/health",
        {"GPULEDGER_DATABASE_URL": f"sqlite+aiosqlite:///{data / 'gpuledger.db'}",
         "GPULEDGER_ADMIN_TOKENS": tokens["admin_token"],
         "GPULEDGER_SIDECAR_TOKENS": tokens["sidecar_token"]},
    ))
    sidecar = Service(
        "sidecar", [*exe, "sidecar", "--port", str(args.sidecar_port)], f"{sidecar_url}/health",
        {**common, "GPULEDGER_CONTROL_PLANE_TOKEN": tokens["sidecar_token"],
         "GPULEDGER_UPSTREAM_URL": engine_url, "GPULEDGER_STATE_DIR": str(data / "sidecar")},
    )
    dashboard = Service(
        "dashboard",
        [*exe, "dashboard", "--port", str(args.dashboard_port)],
        f"{dashboard_url}/_stcore/health",
        {**common, "GPULEDGER_ADMIN_TOKEN": tokens["admin_token"],
         "GPULEDGER_DASHBOARD_SIDECAR_URL": sidecar_url},
    )

    busy = [s.health_url for s in [*services, sidecar, dashboard] if _port_in_use(s.health_url)]
    if busy:
        print(f"gpuledger stack: ports already in use: {', '.join(busy)}", file=sys.stderr)
        return 1
    started: list[Service] = []
    interrupted = False

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        for service in services:
            print(f"starting {service.name} ...", flush=True)
            service.start(logs)
            started.append(service)
        for service in services:
            service.wait_healthy(timeout=900 if service.name == "engine" else 120)
            print(f"  {service.name} healthy", flush=True)
        secret = bootstrap(control_plane, tokens["admin_token"], data, engine_url, "tiny")
        rest = [sidecar] if args.no_dashboard else [sidecar, dashboard]
        for service in rest:
            service.start(logs)
            started.append(service)
        for service in rest:
            service.wait_healthy(timeout=120)
            print(f"  {service.name} healthy", flush=True)
        _print_banner(
            data, secret, logs, sidecar_url, control_plane, None if args.no_dashboard else dashboard_url
        )
        while all(s.process is not None and s.process.poll() is None for s in started):
            time.sleep(1)
        dead = [s.name for s in started if s.process is not None and s.process.poll() is not None]
        print(f"stopping: {', '.join(dead)} exited (see {logs})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted = True
        return 0
    except RuntimeError as exc:
        print(f"gpuledger stack: {exc}; logs in {logs}", file=sys.stderr)
        return 1
    finally:
        if interrupted:
            print("\nstopping ...", flush=True)
        for service in reversed(started):
            service.stop()


def _print_banner(
    data: Path, secret: str | None, logs: Path, sidecar: str, control_plane: str, dashboard: str | None
) -> None:
    key_note = f"new dev key (shown once): {secret}" if secret else f"dev key: $(cat {data / 'dev-key'})"
    print(
        f"""
gpuledger is running. {key_note}
  sidecar (OpenAI API)  {sidecar}/v1
  control plane         {control_plane}/docs   (admin token in {data / 'stack-secrets.json'})
  {f"dashboard             {dashboard}" if dashboard else ""}
  logs                  {logs}

  curl -s {sidecar}/v1/chat/completions -H "Authorization: Bearer $(cat {data / 'dev-key'})" \\
    -H 'content-type: application/json' \\
    -d '{{"model": "tiny", "messages": [{{"role": "user", "content": "tell me about budgets."}}]}}'

Ctrl-C stops everything.""",
        flush=True,
    )
