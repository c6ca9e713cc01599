"""Attribution on a real GPU: the sidecar's clocks against NVML, wall-time bills and vLLM's own times.

Runs on the lent H100 (bench/gpu_attribution.sh starts vLLM and the sidecar, then this). Each
*case* is one window of load through the sidecar; at both ends it scrapes the sidecar's and vLLM's
`/metrics`, and over the window it integrates NVML's `utilization.gpu` (sampled every 50 ms). It
reports, per case, the sidecar's busy GPU-seconds, the attributed GPU-seconds (counter and usage
JSONL), NVML's busy seconds, the "wall time x rate" bill (sum of the requests' end-to-end times)
and vLLM's per-request times. Then it alternates direct and sidecar windows to measure added TTFT.

    python3 -m bench.gpu_attribution --direct http://127.0.0.1:8000 \
        --sidecar http://127.0.0.1:8080 --api-key glk_dev_local_only_change_me \
        --usage-jsonl /tmp/usage.jsonl --out "$OUT/gpu_attribution.json"
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import percentile

# ~206 tokens with the dummy 8B's tokenizer; the number in front defeats the prefix cache.
PROMPT = " ".join(["the quiet river moves slowly at night."] * 24)
RATE_USD_PER_HOUR = 2.49
_COUNTERS = (
    "gpuledger_engine_busy_gpu_seconds_total",
    "gpuledger_attributed_gpu_seconds_total",
    "gpuledger_engine_idle_gpu_seconds_total",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_prefill_time_seconds_sum",
    "vllm:request_decode_time_seconds_sum",
    "vllm:request_inference_time_seconds_sum",
    "vllm:request_success_total",
)


class Nvml:
    """Samples the GPU's utilization.gpu in a thread; integrates it over a window."""

    def __init__(self, period_s: float = 0.05) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        try:  # only the device has a GPU (and nvidia-ml-py)
            self._nv: Any = importlib.import_module("pynvml")
            self._nv.nvmlInit()
            self._h = self._nv.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML (not the device): report None rather than fail the run
            self._nv = None
            return
        self._period = period_s
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            util = self._nv.nvmlDeviceGetUtilizationRates(self._h).gpu
            self.samples.append((time.time(), float(util)))
            time.sleep(self._period)

    def busy_seconds(self, t0: float, t1: float) -> float | None:
        """Integral of utilization/100 over [t0, t1] (each sample holds until the next)."""
        if self._nv is None:
            return None
        pts = [s for s in self.samples if t0 <= s[0] <= t1]
        total = 0.0
        for (ta, ua), (tb, _) in itertools.pairwise(pts):
            total += ua / 100.0 * (tb - ta)
        return total

    def stop(self) -> None:
        self._stop.set()


@dataclass(slots=True)
class Req:
    start: float
    ttft: float | None = None
    e2e: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    vllm: dict[str, float] = field(default_factory=dict)
    error: str | None = None


async def one(s: aiohttp.ClientSession, base: str, key: str | None, model: str, i: int,
              max_tokens: int) -> Req:  # fmt: skip
    body = {"model": model, "messages": [{"role": "user", "content": f"{i}: {PROMPT}"}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = Req(start=time.time())
    t0 = time.perf_counter()
    try:
        async with s.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status != 200:
                r.error = f"{resp.status} {(await resp.text())[:200]}"
                return r
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                d = json.loads(line[6:])
                if r.ttft is None and d.get("choices"):
                    r.ttft = time.perf_counter() - t0
                if d.get("usage"):
                    r.prompt_tokens = d["usage"].get("prompt_tokens", 0)
                    r.output_tokens = d["usage"].get("completion_tokens", 0)
                    r.vllm = {k: v for k, v in (d.get("metrics") or {}).items() if v is not None}
    except (TimeoutError, aiohttp.ClientError) as e:
        r.error = repr(e)
    r.e2e = time.perf_counter() - t0
    return r


async def closed(s: aiohttp.ClientSession, base: str, key: str | None, a: argparse.Namespace,
                 conc: int, *, requests: int = 0, duration: float = 0.0,
                 max_tokens: int = 0) -> list[Req]:  # fmt: skip
    """`conc` streams back to back until `requests` are sent or `duration` has passed."""
    out: list[Req] = []
    end = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker() -> None:
        while (len(out) < requests) if requests else (time.perf_counter() < end):
            i = next(counter)
            if requests and i >= requests:
                return
            n = max_tokens or a.max_tokens
            out.append(await one(s, base, key, a.model, a.seed * 10**6 + i, n))

    await asyncio.gather(*(worker() for _ in range(conc)))
    a.seed += 1
    return out


async def scrape(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sums of the counters above over their label sets."""
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    got = dict.fromkeys(_COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in got:
            got[name] += float(line.rsplit(" ", 1)[1])
    return got


def _read_lines(path: str) -> list[str]:
    # A few thousand short lines between windows: blocking the loop here times nothing.
    p = Path(path)
    return p.read_text().splitlines() if p.exists() else []


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    mean = statistics.fmean(xs)
    cv = statistics.pstdev(xs) / mean if mean else 0.0
    return {"n": len(xs), "sum": sum(xs), "mean": mean, "cv": cv, "min": min(xs), "max": max(xs)}


async def case(s: aiohttp.ClientSession, a: argparse.Namespace, nvml: Nvml, name: str, conc: int,
               **load: Any) -> dict[str, Any]:  # fmt: skip
    lines_before = len(_read_lines(a.usage_jsonl))
    t0 = time.time()
    sc0, vl0 = await scrape(s, a.sidecar), await scrape(s, a.direct)
    reqs = await closed(s, a.sidecar, a.api_key, a, conc, **load)
    await asyncio.sleep(0.5)  # the sidecar writes the record and moves the counter at finish
    sc1, vl1 = await scrape(s, a.sidecar), await scrape(s, a.direct)
    t1 = time.time()
    records = [json.loads(x) for x in _read_lines(a.usage_jsonl)[lines_before:]]
    ok = [r for r in reqs if r.error is None]
    d = {k: sc1[k] - sc0[k] for k in _COUNTERS if k.startswith("gpuledger")}
    d.update({k: vl1[k] - vl0[k] for k in _COUNTERS if k.startswith("vllm")})
    busy = d["gpuledger_engine_busy_gpu_seconds_total"]
    wall_bill = sum(r.e2e for r in ok)
    gpu_s = [float(r["gpu_seconds"]) for r in records if r.get("status") == "ok"]
    in_engine = [(r.vllm.get("queue_time_ms", 0.0) + r.vllm.get("time_to_first_token_ms", 0.0)
                  + r.vllm.get("generation_time_ms", 0.0)) / 1000 for r in ok if r.vllm]  # fmt: skip
    out = {
        "case": name, "concurrency": conc, "window_s": t1 - t0, "requests": len(reqs),
        "errors": len(reqs) - len(ok), "first_error": next((r.error for r in reqs if r.error), None),
        "output_tokens": sum(r.output_tokens for r in ok),
        "prompt_tokens_mean": statistics.fmean(r.prompt_tokens for r in ok) if ok else 0.0,
        "busy_gpu_s": busy, "attributed_gpu_s": d["gpuledger_attributed_gpu_seconds_total"],
        "idle_gpu_s": d["gpuledger_engine_idle_gpu_seconds_total"],
        "jsonl_records": len(records), "jsonl_gpu_s": _stats(gpu_s),
        "jsonl_e2e_sum_s": sum(float(r["e2e_ms"]) for r in records) / 1000,
        "nvml_busy_s": nvml.busy_seconds(t0, t1), "wall_time_bill_s": wall_bill,
        "vllm_in_engine_per_request_s": _stats(in_engine),
        "vllm_metrics_delta": {k: v for k, v in d.items() if k.startswith("vllm")},
        "usd_busy": busy * RATE_USD_PER_HOUR / 3600,
        "usd_wall_time_bill": wall_bill * RATE_USD_PER_HOUR / 3600,
        "ttft_p50_ms": percentile([r.ttft for r in ok if r.ttft is not None], 50) * 1000,
        "sample_vllm_metrics": ok[0].vllm if ok else None,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}), flush=True)
    return out


async def ttft_rounds(s: aiohttp.ClientSession, a: argparse.Namespace, conc: int, rounds: int,
                      **load: Any) -> dict[str, Any]:  # fmt: skip
    """Alternating direct/sidecar windows (order flipped each round); TTFT p50/p95 per path."""
    ttft: dict[str, list[float]] = {"direct": [], "sidecar": []}
    per_round = []
    for n in range(rounds):
        paths = ("direct", "sidecar") if n % 2 == 0 else ("sidecar", "direct")
        row: dict[str, float] = {}
        for path in paths:
            base, key = (a.direct, None) if path == "direct" else (a.sidecar, a.api_key)
            t0 = time.time()
            reqs = await closed(s, base, key, a, conc, **load)
            # At 64 streams the first wave arrives at once: keep the steady state only.
            skip = a.warm_s if conc > 1 else 0.0
            xs = [r.ttft for r in reqs if r.error is None and r.ttft and r.start >= t0 + skip]
            ttft[path] += xs
            row[path] = percentile(xs, 50) * 1000
            row[path + "_n"] = len(xs)
        per_round.append(row)
        print(json.dumps({"ttft_round": n, "concurrency": conc, **row}), flush=True)
    summary = {p: {"n": len(v), "p50_ms": percentile(v, 50) * 1000,
                   "p95_ms": percentile(v, 95) * 1000} for p, v in ttft.items()}  # fmt: skip
    added = summary["sidecar"]["p50_ms"] - summary["direct"]["p50_ms"]
    return {"concurrency": conc, "rounds": per_round, **summary, "added_p50_ms": added}


async def main(a: argparse.Namespace) -> dict[str, Any]:
    nvml = Nvml()
    timeout = aiohttp.ClientTimeout(total=600)
    result: dict[str, Any] = {"args": {k: v for k, v in vars(a).items() if k != "api_key"}}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
        await closed(s, a.sidecar, a.api_key, a, 16, requests=32, max_tokens=32)  # warm-up
        await closed(s, a.direct, None, a, 16, requests=32, max_tokens=32)
        result["cases"] = [
            await case(s, a, nvml, "lone", 1, requests=a.lone_requests),
            await case(s, a, nvml, "c64", 64, duration=a.duration),
        ]
        result["ttft"] = [
            await ttft_rounds(s, a, 1, a.rounds_1, requests=a.ttft_requests, max_tokens=32),
            await ttft_rounds(s, a, 64, a.rounds_64, duration=a.window_s),
        ]
    nvml.stop()
    result["nvml_samples"] = nvml.samples
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.gpu_attribution")
    p.add_argument("--direct", default="http://127.0.0.1:8000")
    p.add_argument("--sidecar", default="http://127.0.0.1:8080")
    p.add_argument("--api-key", default="glk_dev_local_only_change_me")
    p.add_argument("--model", default="llama8b")
    p.add_argument("--max-tokens", type=int, default=256, help="per request (ignore_eos)")
    p.add_argument("--usage-jsonl", default="/tmp/usage.jsonl")
    p.add_argument("--out", default="gpu_attribution.json")
    p.add_argument("--lone-requests", type=int, default=20)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the 64-stream case")
    p.add_argument("--rounds-1", type=int, default=4)
    p.add_argument("--ttft-requests", type=int, default=15, help="per path and round at 1 stream")
    p.add_argument("--rounds-64", type=int, default=2)
    p.add_argument("--window-s", type=float, default=12.0, help="per path and round at 64 streams")
    p.add_argument("--warm-s", type=float, default=3.0, help="64 streams: skip this start")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    Path(args.out).write_text(json.dumps(asyncio.run(main(args)), indent=1))
