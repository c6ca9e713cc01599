"""The sidecar's added latency at 1, 64 and 256 concurrent streams, and its CPU cost per chunk.

`python -m bench.bench_sidecar [--seconds 3] [--rounds 2] [--max-tokens 32] [--streams 1,64,256]`

Upstream is the engine simulator (`serving.simulator`, H100 + Llama-3.1-8B timing), not the CPU
vLLM: against the CPU engine this would measure the engine. The sidecar runs as `gpuledger
sidecar` with a standalone policy (auth, hard guardrails, attribution, metrics, spans without an
exporter, JSONL usage) and whatever guards `sidecar/wiring.py` builds. The load loop is
`bench/loadgen.py`. Direct and sidecar rounds alternate because this machine's speed drifts.
`bench/runner.py` is the wider comparison (LiteLLM, SLO, memory).

Also measured without any network: the SSE scanner's CPU per chunk on vLLM-shaped chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import Result, Workload, closed_loop, make_session, percentile, summarize
from gpuledger.contracts import hash_key
from sidecar.streaming import SseScanner
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "glk_bench_sidecar_0123456789abcdef0123"
MODEL = "llama-3.1-8b"

CHUNK = (
    b'data: {"id":"chatcmpl-96e194b15a783c9b","object":"chat.completion.chunk","created":1795813228,'
    b'"model":"tiny","choices":[{"index":0,"delta":{"content":" cache"},"logprobs":null,'
    b'"finish_reason":null,"token_ids":null}]}\n\n'
)


def scanner_us_per_chunk(chunks: int = 200_000) -> float:
    """CPU time of `SseScanner.feed` per ordinary content chunk (the per-token hot path)."""
    scanner = SseScanner(drop_usage=True)
    feed = scanner.feed
    start = time.process_time()
    for i in range(chunks):
        feed(CHUNK, float(i))
    return (time.process_time() - start) / chunks * 1e6


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _policy(sim_url: str) -> str:
    return json.dumps({
        "version": "bench-sidecar",
        "keys": [{"id": "k_bench", "name": "bench", "key_hash": hash_key(SECRET),
                  "features": ["bench"], "default_feature": "bench", "models": ["*"]}],
        "features": [{"name": "bench", "default_max_tokens": 256, "max_tokens_cap": 1024,
                      "max_prompt_tokens": 4096}],
        "engines": [{"name": "sim", "url": sim_url, "model": MODEL, "gpu_type": "H100-80GB"}],
    })  # fmt: skip


def _pct(rs: list[Result], attr: str, q: float) -> float:
    return percentile([getattr(r, attr) for r in rs if getattr(r, attr) is not None], q) * 1e3


def _row(c: int, direct: list[Result], side: list[Result], walls: list[float], cpu: float) -> str:
    d_ok = [r for r in direct if r.error is None]
    s_ok = [r for r in side if r.error is None]
    added = [_pct(s_ok, a, q) - _pct(d_ok, a, q) for a in ("ttft", "e2e") for q in (50, 99)]
    chunks = sum(r.output_tokens for r in s_ok) + 3 * len(s_ok)  # + role, usage and [DONE]
    per_req_ms = cpu / len(s_ok) * 1e3 if s_ok else float("nan")
    per_chunk_us = cpu / chunks * 1e6 if chunks else float("nan")
    return (
        f"| {c} | {len(s_ok)} | {len(side) - len(s_ok)} | {_pct(d_ok, 'ttft', 50):.1f} | "
        f"{added[0]:+.1f} | {added[1]:+.1f} | {added[2]:+.1f} | {added[3]:+.1f} | "
        f"{len(d_ok) / walls[0]:.0f} / {len(s_ok) / walls[1]:.0f} | {per_req_ms:.2f} | "
        f"{per_chunk_us:.0f} |"
    )


async def run(args: argparse.Namespace) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="gpuledger-bench-sidecar-"))
    sim_port, side_port = free_port(), free_port()
    sim_url, side_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{side_port}"
    (tmp / "policy.yaml").write_text(_policy(sim_url))
    py = sys.executable
    sim = _spawn([py, "-m", "serving.simulator", "--port", str(sim_port), "--speedup",
                  str(args.speedup)], {}, tmp / "simulator.log")  # fmt: skip
    side = _spawn([py, "-m", "gpuledger.cli", "sidecar", "--port", str(side_port)], {
        "GPULEDGER_POLICY_FILE": str(tmp / "policy.yaml"), "GPULEDGER_STATE_DIR": str(tmp / "st"),
        "GPULEDGER_USAGE_JSONL": str(tmp / "usage.jsonl"), "GPULEDGER_UPSTREAM_URL": sim_url,
    }, tmp / "sidecar.log")  # fmt: skip
    w = Workload(model=MODEL, max_tokens=args.max_tokens, stream=True)
    ws = Workload(model=MODEL, max_tokens=args.max_tokens, stream=True, api_key=SECRET)
    rows = []
    try:
        async with make_session() as session:
            deadline = time.monotonic() + 60
            for url, wl in ((sim_url, w), (side_url, ws)):
                while (await closed_loop(session, url, wl, 1, requests=1))[0][0].error:
                    if time.monotonic() > deadline or side.poll() is not None:
                        raise RuntimeError(f"not ready: {url} (logs in {tmp})")
                    await asyncio.sleep(0.5)
                await closed_loop(session, url, wl, 8, requests=64)  # warm-up
            for c in args.streams:
                direct: list[Result] = []
                sided: list[Result] = []
                walls, cpu = [0.0, 0.0], 0.0
                for r in range(args.rounds):
                    for name in ("direct", "sidecar") if r % 2 == 0 else ("sidecar", "direct"):
                        url, wl = (sim_url, w) if name == "direct" else (side_url, ws)
                        cpu0 = _cpu_seconds(side.pid)
                        res, wall = await closed_loop(session, url, wl, c, duration_s=args.seconds)
                        print(f"c={c} round {r + 1} {name:8s} {summarize(res, wall).line()}")
                        if name == "direct":
                            direct += res
                            walls[0] += wall
                        else:
                            cpu += _cpu_seconds(side.pid) - cpu0
                            sided += res
                            walls[1] += wall
                rows.append(_row(c, direct, sided, walls, cpu))
    finally:
        _stop(side)
        _stop(sim)
    lines = [
        f"streams of {args.max_tokens} tokens, {args.rounds} alternating rounds x {args.seconds}s; "
        f"scanner alone: {scanner_us_per_chunk():.2f} us CPU per chunk",
        "",
        "| streams | requests (sidecar) | errors | TTFT p50 direct ms | added TTFT p50 ms | "
        "added TTFT p99 ms | added e2e p50 ms | added e2e p99 ms | req/s direct / sidecar | "
        "sidecar CPU ms/request | sidecar CPU us/chunk |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_sidecar", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="per round and concurrency")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--streams",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 64, 256],
        help="comma-separated concurrencies (default 1,64,256)",
    )
    p.add_argument("--speedup", type=float, default=1.0, help="simulator time scale")
    p.add_argument("--micro", action="store_true", help="only the scanner microbenchmark")
    args = p.parse_args(argv)
    if args.micro:
        print(f"SseScanner.feed: {scanner_us_per_chunk():.2f} us CPU per chunk")
        return 0
    import uvloop

    print(uvloop.run(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
