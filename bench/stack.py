"""The benchmark's processes: the engine simulator and the two proxies in front of it (the
sidecar with everything on, LiteLLM's proxy), started as a user would, and what /proc says of
their CPU time and memory (the process and its descendants, no psutil needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from bench.loadgen import Workload, closed_loop

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("direct", "gpuledger", "litellm")
SECRET = "glk_bench_0123456789abcdef0123456789abcdef"
LITELLM_KEY = "sk-bench-litellm"
MODEL = "llama-3.1-8b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids.extend(int(c) for c in f.read().split())
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a process and its descendants, from /proc (no psutil needed)."""
    ticks, hz = 0, os.sysconf("SC_CLK_TCK")
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / hz


def rss_bytes(pid: int) -> int:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen[bytes] | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)  # fmt: skip


def _policy(sim_url: str) -> str:
    from gpuledger.contracts import hash_key

    far = "2099-01-01T00:00:00Z"
    return json.dumps({
        "version": "bench-1",
        "keys": [{"id": "k_bench", "name": "bench", "key_hash": hash_key(SECRET),
                  "features": ["bench"], "default_feature": "bench", "models": ["*"]}],
        "features": [{"name": "bench", "default_max_tokens": 256, "max_tokens_cap": 1024,
                      "over_cap": "reject", "max_prompt_tokens": 4096}],
        "rate_limits": [{"scope": "key", "key_id": "k_bench",
                         "limits": {"requests_per_minute": 10_000_000,
                                    "tokens_per_minute": 10_000_000_000,
                                    "concurrent_requests": 100_000}}],
        "budgets": [{"feature": "bench", "period": "month", "period_start": "2026-01-01T00:00:00Z",
                     "period_end": far, "limit_gpu_seconds": 1e12, "used_gpu_seconds": 0}],
        "engines": [{"name": "sim", "url": sim_url, "model": MODEL, "gpu_type": "H100-80GB",
                     "gpus": 1, "hourly_rate_usd": 2.5}],
    })  # fmt: skip


def start_all(tmp: Path, speedup: float, paths: tuple[str, ...], otlp_url: str) -> dict[str, Proc]:
    py, sim_port = sys.executable, free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    procs = {"direct": Proc("direct", sim_url, spawn(
        [py, "-m", "serving.simulator", "--port", str(sim_port), "--speedup", str(speedup)],
        {}, tmp / "simulator.log"))}  # fmt: skip
    if "gpuledger" in paths:
        _start_sidecar(procs, tmp, sim_url, otlp_url)
    if "litellm" in paths:
        _start_litellm(procs, tmp, sim_url)
    return procs


def _start_sidecar(procs: dict[str, Proc], tmp: Path, sim_url: str, otlp_url: str) -> None:
    py, side_port = sys.executable, free_port()
    policy = tmp / "policy.yaml"
    policy.write_text(_policy(sim_url))
    side_env = {
        "GPULEDGER_HOST": "127.0.0.1", "GPULEDGER_PORT": str(side_port),
        "GPULEDGER_UPSTREAM_URL": sim_url, "GPULEDGER_UPSTREAM_NAME": "sim",
        "GPULEDGER_POLICY_FILE": str(policy), "GPULEDGER_STATE_DIR": str(tmp / "sidecar"),
        "GPULEDGER_USAGE_JSONL": str(tmp / "usage.jsonl"), "GPULEDGER_TRACING_ENABLED": "true",
        "GPULEDGER_SIDECAR_ID": "bench", "GPULEDGER_SHEDDING_ENABLED": "true",
        # Spans are exported for real (to the runner's OTLP sink), not just created.
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
    }  # fmt: skip
    gpl = shutil.which("gpuledger", path=str(Path(py).parent)) or "gpuledger"
    procs["gpuledger"] = Proc("gpuledger", f"http://127.0.0.1:{side_port}",
                              spawn([gpl, "sidecar"], side_env, tmp / "sidecar.log"),
                              {"Authorization": f"Bearer {SECRET}"})  # fmt: skip


def _start_litellm(procs: dict[str, Proc], tmp: Path, sim_url: str) -> None:
    lite_port = free_port()
    cfg = (ROOT / "bench" / "litellm_config.yaml").read_text().replace("UPSTREAM", sim_url)
    (tmp / "litellm.yaml").write_text(cfg)
    lite = ROOT / ".venv-litellm" / "bin" / "litellm"
    lite_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "true",
                "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true",
                # It fetches a llama-3 tokenizer from the Hub to count tokens; fail fast offline.
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    procs["litellm"] = Proc("litellm", f"http://127.0.0.1:{lite_port}", spawn(
        [str(lite), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1",
         "--port", str(lite_port), "--num_workers", "1"], lite_env, tmp / "litellm.log"),
        {"Authorization": f"Bearer {LITELLM_KEY}"})  # fmt: skip


async def wait_ready(session: aiohttp.ClientSession, procs: dict[str, Proc], tmp: Path,
                     timeout_s: float = 120.0) -> None:  # fmt: skip
    """Wait until one real request succeeds on each path (health alone may precede routing)."""
    w = Workload(model=MODEL, max_tokens=2, stream=False)
    deadline = time.monotonic() + timeout_s
    for name, p in procs.items():
        while True:
            if p.popen is not None and p.popen.poll() is not None:
                log = tmp / f"{ {'direct': 'simulator', 'gpuledger': 'sidecar'}.get(name, name)}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{name} exited ({p.popen.returncode}):\n{tail}")
            res, _ = await closed_loop(session, p.url, with_headers(w, p), 1, requests=1)
            if res[0].error is None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready: {res[0].error}")
            await asyncio.sleep(0.5)


def with_headers(w: Workload, p: Proc) -> Workload:
    """`w` with the path's credentials."""
    return replace(w, extra_headers=p.headers)
