"""Cost of the sidecar's soft guardrails per event.

    .venv/bin/python -m bench.bench_engine_watch [--engine-url http://127.0.0.1:8000] [-n 200]

* `parse /metrics (full)`: `prometheus_client`'s parser over the engine's whole /metrics page;
* `parse /metrics (filtered)`: `parse_vllm_metrics`, which keeps only the lines it reads first
  (what the engine watch does every 2 s per engine, in a worker thread);
* `shed guard admit`: `ShedGuard.admit` for a low-priority request while the engine is calm
  (the per-request cost when shedding is on: a sustained-window check, no I/O);
* `prefix advisor observe`: `prompt_head` + `PrefixAdvisor.observe` for a chat body with a 4 KB
  system prompt (the per-request cost, always on).

Prints a markdown table of the median and p99 per call.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gpuledger.contracts import FeaturePolicy, KeyPolicy
from sidecar.engine_watch import EngineWatch, parse_vllm_metrics
from sidecar.hooks import RequestContext
from sidecar.prefix_advisor import PrefixAdvisor, prompt_head
from sidecar.shedding import ShedGuard


def _time(fn: Callable[[], object], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine-url", default="http://127.0.0.1:8000")
    ap.add_argument("-n", type=int, default=200)
    args = ap.parse_args()
    text = httpx.get(f"{args.engine_url}/metrics", timeout=10).text
    rows = [
        (
            "parse /metrics (full)",
            _time(lambda: list(text_string_to_metric_families(text)), args.n),
        ),
        ("parse /metrics (filtered)", _time(lambda: parse_vllm_metrics(text, 0.0), args.n)),
    ]

    watch = EngineWatch({"main": args.engine_url})
    for _ in range(30):
        watch.ingest("main", text)
    low = FeaturePolicy(name="batch", priority=0)
    guard = ShedGuard(
        watch, lambda: [low, FeaturePolicy(name="chat", priority=5, slo_ttft_ms=2000)]
    )
    key = KeyPolicy(
        id="k", name="k", key_hash="0" * 64, features=["batch"], default_feature="batch"
    )
    ctx = RequestContext(
        request_id="r", key=key, feature=low, model="tiny", engine="main", stream=False,
        prompt_tokens_estimate=10, max_output_tokens=16, started_at=datetime.now(UTC),
    )  # fmt: skip
    loop = asyncio.new_event_loop()
    n_fast = args.n * 50
    rows.append(
        ("shed guard admit", _time(lambda: loop.run_until_complete(guard.admit(ctx)), n_fast))
    )
    loop.close()

    advisor = PrefixAdvisor()
    body = {
        "messages": [
            {"role": "system", "content": "You are terse. " * 270},
            {"role": "user", "content": "hi"},
        ]
    }
    rows.append(
        (
            "prefix advisor observe",
            _time(lambda: advisor.observe("chat", prompt_head(body), 1000), n_fast),
        )
    )

    print(
        f"{platform.node()} {platform.processor() or platform.machine()}; /metrics page {len(text)} bytes"
    )
    print("| what | median | p99 |\n|---|---|---|")
    for name, (med, p99) in rows:
        print(f"| {name} | {med * 1e6:.1f} us | {p99 * 1e6:.1f} us |")


if __name__ == "__main__":
    main()
