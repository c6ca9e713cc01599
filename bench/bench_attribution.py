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
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.attribution import EngineClock
from sidecar.pricing import cost_usd

# --- micro -----------------------------------------------------------------------------------


def _per_op(fn: Callable[[int], None], reps: int) -> float:
    """Best-of-5 ns per call of fn(i) for i in range(reps)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        fn(reps)
        best = min(best, (time.perf_counter_ns() - start) / reps)
    return best


def micro() -> None:
    print(
        "| in flight | admit ns | chunk (progress) ns | first token ns | finish ns "
        "| request of admit + 100 chunks + finish, ns/event |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    ids = [f"r{i}" for i in range(20_000)]
    for inflight in (1, 64, 1024):
        # Prefill deadlines 1 ms/token away: each admission pushes one, none falls due here.
        clock = EngineClock(
            "bench", gpus=8, prefill_cost_factor=0.05, prefill_seconds_per_token=1e-3
        )
        for i in range(inflight):
            clock.admit(f"bg{i}", 300)
            clock.progress(f"bg{i}", 1)

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


class _Fanout:
    """Feeds the same events to several clocks (to compare models on one run)."""

    def __init__(self, *clocks: EngineClock) -> None:
        self.clocks = clocks

    def admit(self, rid: str, prompt_tokens: int) -> None:
        for c in self.clocks:
            c.admit(rid, prompt_tokens)

    def progress(self, rid: str, out: int) -> None:
        for c in self.clocks:
            c.progress(rid, out)

    def finish(self, rid: str) -> list[float]:
        return [c.finish(rid) for c in self.clocks]


@dataclass
class _Result:
    wall: float
    charges: list[float]  # one per clock of the fanout
    out: int
    prompt: int
    engine_seconds: float | None  # vLLM's per-request TTFT + generation time


async def _stream(
    session: aiohttp.ClientSession, url: str, clock: _Fanout, rid: str, prompt: str, max_tokens: int
) -> _Result:

    body = {
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    sent = time.monotonic()
    clock.admit(rid, len(prompt) // 4)
    metrics: dict[str, float] | None = None
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
    charges = clock.finish(rid)
    engine_s = None
    if metrics is not None:
        engine_s = (metrics["time_to_first_token_ms"] + metrics["generation_time_ms"]) / 1000.0
    return _Result(time.monotonic() - sent, charges, out, len(prompt) // 4, engine_s)


async def _batch(url: str, clock: _Fanout, n: int, seed: int) -> list[_Result]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven"]
    async with aiohttp.ClientSession() as session:
        jobs = []
        for i in range(n):
            k = 4 + (seed + 29 * i) % 50  # prompt words: ~4 tokens each with the tiny tokenizer
            prompt = " ".join(words[(seed + i + j) % len(words)] for j in range(k))
            jobs.append(_stream(session, url, clock, f"{seed}-{i}", prompt, 16 + (41 * i) % 180))
        return await asyncio.gather(*jobs)


async def _sample_running(url: str, stop: asyncio.Event, every: float = 0.1) -> float:
    """Engine-side busy seconds: time during which vLLM's own `vllm:num_requests_running` gauge
    was above 0, sampled every `every` seconds (each sample stands for the interval after it)."""
    busy = 0.0
    async with aiohttp.ClientSession() as session:
        last: tuple[float, bool] | None = None
        while not stop.is_set():
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            now = time.monotonic()
            running = any(
                line.startswith("vllm:num_requests_running") and float(line.rsplit(" ", 1)[1]) > 0
                for line in text.splitlines()
            )
            if last is not None and last[1]:
                busy += now - last[0]
            last = (now, running)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    return busy


async def _batch_sampled(
    url: str, clock: _Fanout, n: int, seed: int
) -> tuple[list[_Result], float]:
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_running(url, stop))
    results = await _batch(url, clock, n, seed)
    stop.set()
    return results, await sampler


def engine(url: str, concurrency: int, rate: float, factor: float, max_num_seqs: int) -> None:
    pids = _engine_pids()
    if not pids:
        print("no VLLM:: processes found: the CPU-time check needs the engine on this machine")
    # Idle CPU draw of the engine processes (their busy-poll loops), to subtract.
    c0, t0 = _cpu_seconds(pids), time.monotonic()
    time.sleep(3.0)
    idle_rate = (_cpu_seconds(pids) - c0) / (time.monotonic() - t0)
    # CPU seconds per busy second, from lone requests (nothing else of ours in flight).
    lone_clock = EngineClock("lone", prefill_cost_factor=factor)
    c0 = _cpu_seconds(pids)
    asyncio.run(_batch(url, _Fanout(lone_clock), 1, 7))
    asyncio.run(_batch(url, _Fanout(lone_clock), 1, 8))
    lone_cpu = _cpu_seconds(pids) - c0 - idle_rate * lone_clock.busy_gpu_seconds
    cpu_per_busy = lone_cpu / lone_clock.busy_gpu_seconds
    clock = EngineClock("tiny", prefill_cost_factor=factor)
    capped = EngineClock("tiny", prefill_cost_factor=factor, max_num_seqs=max_num_seqs)
    c0, t0 = _cpu_seconds(pids), time.monotonic()
    results, engine_busy = asyncio.run(
        _batch_sampled(url, _Fanout(clock, capped), concurrency, 1)
    )
    window = time.monotonic() - t0
    cpu = _cpu_seconds(pids) - c0 - idle_rate * window
    busy = clock.busy_gpu_seconds
    charged = sum(r.charges[0] for r in results)
    charged_capped = sum(r.charges[1] for r in results)
    walls = sum(r.wall for r in results)
    engine_times = [r.engine_seconds for r in results if r.engine_seconds is not None]
    tokens = sum(r.out for r in results)
    print(f"engine processes {pids}, idle draw {idle_rate:.3f} CPU-s/s, "
          f"lone request {cpu_per_busy:.3f} CPU-s per busy second")
    print(f"{concurrency} requests, {tokens} output tokens, window {window:.2f} s, rate ${rate}/h")
    print("| measure | seconds | USD at the rate | vs engine busy |")
    print("|---|---:|---:|---:|")
    rows = [
        ("engine busy time (gpuledger clock)", busy),
        ("sum of gpuledger charges", charged),
        (f"sum of gpuledger charges, max_num_seqs={max_num_seqs} queue model", charged_capped),
        ("sum of wall times (LiteLLM cost_per_second)", walls),
        ("sum of vLLM per-request times (TTFT + generation)", sum(engine_times)),
        ("vLLM num_requests_running > 0, sampled every 0.1 s (independent)", engine_busy),
        ("engine CPU time / CPU-per-busy-second (independent)", cpu / cpu_per_busy),
    ]
    for name, secs in rows:
        print(f"| {name} | {secs:.3f} | {cost_usd(secs, rate):.8f} | {secs / busy:.2f}x |")
    print(f"engine CPU {cpu:.2f} s")
    # How well each model tracks each request's work: charge per work unit (uncached prompt
    # tokens x f + output tokens) should be about the same for every request.
    for i, name in enumerate(("no queue model", f"max_num_seqs={max_num_seqs}")):
        per_work = [
            r.charges[i] / (r.prompt * factor + r.out)
            for r in results
        ]
        cv = statistics.pstdev(per_work) / statistics.mean(per_work)
        print(f"{name}: charge per work unit, coefficient of variation {cv:.2f} "
              f"(min {min(per_work) * 1e3:.2f} ms, max {max(per_work) * 1e3:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("micro")
    e = sub.add_parser("engine")
    e.add_argument("--url", default="http://127.0.0.1:8000")
    e.add_argument("--concurrency", type=int, default=64)
    e.add_argument("--rate", type=float, default=0.10, help="USD per engine-hour")
    e.add_argument("--factor", type=float, default=0.13, help="prefill_cost_factor")
    e.add_argument("--max-num-seqs", type=int, default=16, help="the engine's max_num_seqs")
    args = parser.parse_args()
    if args.mode == "micro":
        micro()
    else:
        engine(args.url, args.concurrency, args.rate, args.factor, args.max_num_seqs)


if __name__ == "__main__":
    main()
