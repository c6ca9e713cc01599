"""Benchmarks of the GPU-second attribution (sidecar/attribution.py).

  python bench/bench_attribution.py micro               # ns per event, pure Python
  python bench/bench_attribution.py engine --url http://127.0.0.1:8000 --concurrency 64

`engine` streams N concurrent requests through a real vLLM engine, drives an EngineClock with the
events a sidecar sees, and compares: the clock's busy time, the sum of the charges, the sum of
wall times (what a "wall time x rate" bill charges, LiteLLM's cost_per_second method), vLLM's own
per-request timings, and an independent clock: the CPU time of the engine's processes (CPU engine;
read from /proc), converted to busy seconds with the CPU-per-busy-second of a lone request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.attribution import EngineClock  # noqa: E402
from sidecar.pricing import cost_usd  # noqa: E402

# --- micro -----------------------------------------------------------------------------------


def _per_op(fn: object, reps: int) -> float:
    """Best-of-5 ns per call of fn(i) for i in range(reps)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        fn(reps)  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - start) / reps)
    return best


def micro() -> None:
    print("| in flight | admit ns | chunk (progress) ns | first token ns | finish ns | full request of 100 chunks, ns/event |")
    print("|---:|---:|---:|---:|---:|---:|")
    for inflight in (1, 64, 1024):
        clock = EngineClock("bench", gpus=8, prefill_cost_factor=0.05)
        for i in range(inflight):
            clock.admit(f"bg{i}", 300)
            clock.progress(f"bg{i}", 1)
        ids = [f"r{i}" for i in range(20_000)]

        def admit(n: int, clock: EngineClock = clock) -> None:
            for i in range(n):
                clock.admit(ids[i], 312)

        def first(n: int, clock: EngineClock = clock) -> None:
            for i in range(n):
                clock.progress(ids[i], 1)

        def chunk(n: int, clock: EngineClock = clock) -> None:
            for i in range(n):
                clock.progress(ids[i % 1000], 7)

        def finish(n: int, clock: EngineClock = clock) -> None:
            for i in range(n):
                clock.finish(ids[i])

        n = 20_000
        t_admit = t_first = t_chunk = t_finish = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            admit(n)
            t1 = time.perf_counter_ns()
            first(n)
            t2 = time.perf_counter_ns()
            chunk(n)
            t3 = time.perf_counter_ns()
            finish(n)
            t4 = time.perf_counter_ns()
            t_admit = min(t_admit, (t1 - t0) / n)
            t_first = min(t_first, (t2 - t1) / n)
            t_chunk = min(t_chunk, (t3 - t2) / n)
            t_finish = min(t_finish, (t4 - t3) / n)

        def lifecycle(n: int, clock: EngineClock = clock) -> None:
            # n events: requests of admit + 100 chunks + finish.
            per = 102
            for r in range(n // per):
                rid = ids[r % 20_000]
                clock.admit(rid, 312)
                for k in range(1, 101):
                    clock.progress(rid, k)
                clock.finish(rid)

        t_life = _per_op(lifecycle, 102 * 200)
        print(
            f"| {inflight} | {t_admit:.0f} | {t_chunk:.0f} | {t_first:.0f} | {t_finish:.0f} "
            f"| {t_life:.0f} |"
        )


# --- engine ----------------------------------------------------------------------------------


def _engine_pids() -> list[int]:
    """PIDs of vLLM's engine processes (EngineCore and its CPU workers), by process name."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("VLLM::"):
            pids.append(int(entry.name))
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def _stream(session, url, clock, rid, prompt, max_tokens):  # type: ignore[no-untyped-def]
    import orjson

    body = {
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    sent = time.monotonic()
    clock.admit(rid, len(prompt) // 4)
    metrics = None
    out = 0
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if chunk.get("usage"):
                out = chunk["usage"]["completion_tokens"]
                clock.progress(rid, out)
            metrics = chunk.get("metrics") or metrics
    charge = clock.finish(rid)
    return {"wall": time.monotonic() - sent, "charge": charge, "out": out, "metrics": metrics}


async def _batch(url: str, clock: EngineClock, n: int, seed: int) -> list[dict[str, object]]:
    import aiohttp

    words = "the quick brown fox jumps over a lazy dog while seven wizards".split()
    async with aiohttp.ClientSession() as session:
        jobs = []
        for i in range(n):
            k = 4 + (seed + 29 * i) % 50
            prompt = " ".join(words[(seed + i + j) % len(words)] for j in range(k))
            jobs.append(_stream(session, url, clock, f"{seed}-{i}", prompt, 16 + (41 * i) % 180))
        return await asyncio.gather(*jobs)


def engine(url: str, concurrency: int, rate: float) -> None:
    pids = _engine_pids()
    if not pids:
        print("no VLLM:: processes found: the CPU-time check needs the engine on this machine")
    # Idle CPU draw of the engine processes (their busy-poll loops), to subtract.
    c0, t0 = _cpu_seconds(pids), time.monotonic()
    time.sleep(3.0)
    idle_rate = (_cpu_seconds(pids) - c0) / (time.monotonic() - t0)
    # CPU seconds per busy second, from lone requests (nothing else of ours in flight).
    lone_clock = EngineClock("lone", prefill_cost_factor=0.13)
    c0 = _cpu_seconds(pids)
    lone = asyncio.run(_batch(url, lone_clock, 1, 7))
    lone += asyncio.run(_batch(url, lone_clock, 1, 8))
    lone_cpu = _cpu_seconds(pids) - c0 - idle_rate * lone_clock.busy_gpu_seconds
    cpu_per_busy = lone_cpu / lone_clock.busy_gpu_seconds
    clock = EngineClock("tiny", prefill_cost_factor=0.13)
    c0, t0 = _cpu_seconds(pids), time.monotonic()
    results = asyncio.run(_batch(url, clock, concurrency, 1))
    window = time.monotonic() - t0
    cpu = _cpu_seconds(pids) - c0 - idle_rate * window
    busy = clock.busy_gpu_seconds
    charged = sum(float(r["charge"]) for r in results)  # type: ignore[arg-type]
    walls = sum(float(r["wall"]) for r in results)  # type: ignore[arg-type]
    engine_times = [
        (m["time_to_first_token_ms"] + m["generation_time_ms"]) / 1000.0
        for r in results if isinstance(m := r["metrics"], dict)
    ]
    tokens = sum(int(r["out"]) for r in results)  # type: ignore[call-overload]
    print(f"engine processes {pids}, idle draw {idle_rate:.3f} CPU-s/s, "
          f"lone request {cpu_per_busy:.3f} CPU-s per busy second")
    print(f"{concurrency} requests, {tokens} output tokens, window {window:.2f} s, rate ${rate}/h")
    print("| measure | seconds | USD at the rate | vs engine busy |")
    print("|---|---:|---:|---:|")
    rows = [
        ("engine busy time (gpuledger clock)", busy),
        ("sum of gpuledger charges", charged),
        ("sum of wall times (LiteLLM cost_per_second)", walls),
        ("sum of vLLM per-request times (TTFT + generation)", sum(engine_times)),
        ("engine CPU time / CPU-per-busy-second (independent)", cpu / cpu_per_busy),
    ]
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {cost_usd(secs, rate):.8f} | {secs / busy:.2f}x |")
    charges = [float(r["charge"]) for r in results]  # type: ignore[arg-type]
    print(f"charge per request: median {statistics.median(charges):.4f} s, "
          f"min {min(charges):.4f}, max {max(charges):.4f}; engine CPU {cpu:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("micro")
    e = sub.add_parser("engine")
    e.add_argument("--url", default="http://127.0.0.1:8000")
    e.add_argument("--concurrency", type=int, default=64)
    e.add_argument("--rate", type=float, default=0.10, help="USD per engine-hour")
    args = parser.parse_args()
    if args.mode == "micro":
        micro()
    else:
        engine(args.url, args.concurrency, args.rate)


if __name__ == "__main__":
    main()
