"""Overhead benchmark: direct vs gpuledger's sidecar vs LiteLLM's proxy, in one run.

`python -m bench.runner [--quick]` starts the engine simulator (`serving.simulator`, H100 +
Llama-3.1-8B timing), the sidecar (`gpuledger sidecar`, with a policy file that turns on auth,
guardrails, rate limits, attribution, metrics, tracing and the usage spool) and LiteLLM's proxy
(`.venv-litellm`, see bench/install_litellm.sh), all in front of that one simulator. Every
measurement visits the three paths in turn, rotating the order each round, because this
machine's speed drifts by ±25% over minutes: only numbers taken side by side compare.

Measured: added TTFT/e2e latency (p50/p95/p99 of the path minus the same percentile direct) at 1,
64 and 256 closed-loop streams; throughput relative to direct; proxy CPU-seconds per 1,000
requests (the proxy's process tree, from /proc); the highest Poisson arrival rate each path
sustains under a TTFT SLO; RSS growth of the proxy from 10% to 100% of a long run. Writes a
markdown table (and JSON) to bench/results/ and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.loadgen import (
    Result,
    Workload,
    closed_loop,
    make_session,
    open_loop,
    percentile,
    summarize,
)  # fmt: skip
from bench.stack import (
    MODEL,
    PATHS,
    ROOT,
    Proc,
    cpu_seconds,
    free_port,
    rss_bytes,
    start_all,
    wait_ready,
    with_headers,
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    rounds: dict[int, int]  # per concurrency
    concurrencies: tuple[int, ...]
    seconds: dict[int, float]
    slo_ttft_ms: float
    rates: tuple[float, ...]
    rate_seconds: float
    rss_requests: int
    rss_requests_litellm: int
    hard_stop_s: float  # longest a closed-loop window may last; unfinished requests count as errors
    warm_litellm: int  # warm-up streams for LiteLLM (the others warm up at the highest concurrency)


# LiteLLM serves ~8 req/s at 256 streams here, so one 256-stream window costs it ~30 s: the quick
# plan measures 256 streams in a single rotation.
QUICK = Plan({1: 2, 64: 2, 256: 1}, (1, 64, 256), {1: 1.5, 64: 2.0, 256: 1.0}, 500.0,
             (5, 10, 20, 40, 80, 160, 320), 2.0, 2_000, 100, 8.0, 16)  # fmt: skip
FULL = Plan({1: 4, 64: 4, 256: 2}, (1, 64, 256), {1: 8.0, 64: 10.0, 256: 10.0}, 500.0,
            (5, 7, 10, 14, 20, 28, 40, 56, 80, 113, 160, 226, 320, 452, 640), 6.0, 100_000, 2_000, 120.0, 256)  # fmt: skip


# --- processes ---------------------------------------------------------------------------------


@dataclass
class _Sink:
    runner: web.AppRunner
    url: str


async def _otlp_sink() -> _Sink:
    """An OTLP/HTTP endpoint that accepts and drops trace exports, so tracing runs end to end."""

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return _Sink(runner, f"http://127.0.0.1:{port}")


# --- phases ------------------------------------------------------------------------------------


@dataclass
class Cell:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0


async def settle(session: aiohttp.ClientSession, procs: dict[str, Proc], timeout_s: float = 60.0) -> None:
    """Wait until the engine is idle and no proxy burns CPU (e.g. on requests the client gave
    up on at a hard stop), so one window's leftovers don't slow the next path's window."""
    deadline = time.monotonic() + timeout_s
    sim = procs["direct"].url
    quiet = 0
    while time.monotonic() < deadline and quiet < 2:  # quiet twice in a row (~0.6 s)
        async with session.get(f"{sim}/metrics") as r:
            text = await r.text()
        busy = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{")))  # fmt: skip
        cpu0 = {n: cpu_seconds(p.pid) for n, p in procs.items() if p.pid and n != "direct"}
        await asyncio.sleep(0.3)
        burning = any(cpu_seconds(procs[n].pid or 0) - c > 0.06 for n, c in cpu0.items())
        quiet = quiet + 1 if not busy and not burning else 0


async def latency_phase(session: aiohttp.ClientSession, procs: dict[str, Proc], plan: Plan,
                        w: Workload, log: Any) -> dict[int, dict[str, Cell]]:  # fmt: skip
    cells: dict[int, dict[str, Cell]] = {c: {p: Cell() for p in procs} for c in plan.concurrencies}
    for c in plan.concurrencies:
        for r in range(plan.rounds[c]):
            names = [p for p in PATHS if p in procs]
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                p, cell = procs[name], cells[c][name]
                cpu0 = cpu_seconds(p.pid) if p.pid and name != "direct" else 0.0
                res, wall = await closed_loop(session, p.url, with_headers(w, p), c, duration_s=plan.seconds[c],
                                              hard_stop_s=plan.hard_stop_s)  # fmt: skip
                cell.cpu += (cpu_seconds(p.pid) - cpu0) if p.pid and name != "direct" else 0.0
                cell.results += res
                cell.wall += wall
                log(f"c={c} round {r + 1} {name:9s} {summarize(res, wall).line()}")
                await settle(session, procs)
    return cells


async def slo_phase(session: aiohttp.ClientSession, procs: dict[str, Proc], plan: Plan,
                    w: Workload, log: Any) -> dict[str, float]:  # fmt: skip
    """Highest offered Poisson rate whose TTFT p99 meets the SLO with <1% errors and the
    offered rate achieved. A path drops out after missing the same rate twice in a row (one miss
    may be a neighbour's burst on this shared machine). Paths alternate per rate."""
    best = {p: 0.0 for p in procs}
    active = list(procs)
    for rate in plan.rates:
        for name in list(active):
            p = procs[name]
            for attempt in (1, 2):
                res, wall = await open_loop(session, p.url, with_headers(w, p), rate, plan.rate_seconds)
                s = summarize(res, plan.rate_seconds)
                ok = (s.errors <= 0.01 * max(1, s.requests) and s.ttft_ms["p99"] <= plan.slo_ttft_ms
                      and wall <= plan.rate_seconds * 1.5)  # fmt: skip
                log(f"rate {rate:5.0f}/s {name:9s} {'ok  ' if ok else 'MISS'} {s.line()}"
                    + (f" (first error: {s.first_error})" if s.first_error else ""))
                await settle(session, procs)
                if ok:
                    best[name] = rate
                    break
                if attempt == 2:
                    active.remove(name)
        if not active:
            break
    return best


async def rss_phase(session: aiohttp.ClientSession, p: Proc, total: int, log: Any) -> dict[str, float]:
    """RSS after 10% and after 100% of `total` short non-streamed requests at 64 in flight."""
    w = with_headers(Workload(model=MODEL, max_tokens=4, stream=False, prompt_chars=200), p)
    assert p.pid is not None
    first = max(1, total // 10)
    await closed_loop(session, p.url, w, 64, requests=first)
    r1 = rss_bytes(p.pid)
    t0 = time.perf_counter()
    res, _ = await closed_loop(session, p.url, w, 64, requests=total - first)
    r2 = rss_bytes(p.pid)
    errors = sum(1 for r in res if r.error)
    log(f"rss {p.name}: {r1 / 2**20:.1f} MiB after {first}, {r2 / 2**20:.1f} MiB after {total} "
        f"({errors} errors, {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return {"requests": total, "rss_at_10pct_mib": r1 / 2**20, "rss_end_mib": r2 / 2**20,
            "growth_pct": 100 * (r2 - r1) / r1 if r1 else float("nan")}  # fmt: skip


# --- report ------------------------------------------------------------------------------------


def _pct(results: list[Result], attr: str) -> dict[int, float]:
    xs = [getattr(r, attr) for r in results if r.error is None and getattr(r, attr) is not None]
    return {q: percentile(xs, q) * 1000 for q in (50, 95, 99)}


def report(cells: dict[int, dict[str, Cell]], slo: dict[str, float], rss: dict[str, dict[str, float]],
           plan: Plan, meta: dict[str, Any]) -> str:  # fmt: skip
    out = [f"Run {meta['started']} ({meta['mode']}), {meta['machine']}; workload: streamed chat, "
           f"~200-token prompts, {meta['max_tokens']} output tokens; simulator preset h100-llama8b "
           f"(speedup {meta['speedup']}). Added = path percentile minus direct percentile.", "",
           "| streams | path | req/s (vs direct) | errors or unfinished | TTFT p50/p95/p99 ms | added TTFT p50/p95/p99 ms "
           "| e2e p50/p95/p99 ms | added e2e p50/p95/p99 ms | proxy CPU-s / 1k req |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    f = "{:.1f}/{:.1f}/{:.1f}"
    for c, row in cells.items():
        d = row["direct"]
        d_rps = len([r for r in d.results if not r.error]) / d.wall if d.wall else 0.0
        dt, de = _pct(d.results, "ttft"), _pct(d.results, "e2e")
        for name, cell in row.items():
            ok = [r for r in cell.results if not r.error]
            rps = len(ok) / cell.wall if cell.wall else 0.0
            t, e = _pct(cell.results, "ttft"), _pct(cell.results, "e2e")
            added_t = "—" if name == "direct" else f.format(*(t[q] - dt[q] for q in (50, 95, 99)))
            added_e = "—" if name == "direct" else f.format(*(e[q] - de[q] for q in (50, 95, 99)))
            cpu = "—" if name == "direct" else f"{1000 * cell.cpu / max(1, len(cell.results)):.2f}"
            rel = f"{100 * rps / d_rps:.0f}%" if d_rps else "?"
            out.append(f"| {c} | {name} | {rps:.1f} ({rel}) | {len(cell.results) - len(ok)} | "
                       f"{f.format(*t.values())} | {added_t} | {f.format(*e.values())} | {added_e} | {cpu} |")  # fmt: skip
    out += ["", f"Highest Poisson arrival rate meeting TTFT p99 ≤ {plan.slo_ttft_ms:.0f} ms, <1% errors "
            f"(ladder {', '.join(f'{r:g}' for r in plan.rates)} req/s, {plan.rate_seconds:g} s each):", "",
            "| path | sustained req/s |", "|---|---:|"]  # fmt: skip
    out += [f"| {p} | ≥ {r:g} |" if r else f"| {p} | < {plan.rates[0]:g} |" for p, r in slo.items()]
    out += ["", "RSS of the proxy (process tree), short non-streamed requests at 64 in flight:", "",
            "| path | requests | RSS at 10% MiB | RSS at end MiB | growth |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    out += [f"| {p} | {v['requests']:,.0f} | {v['rss_at_10pct_mib']:.1f} | {v['rss_end_mib']:.1f} | "
            f"{v['growth_pct']:+.1f}% |" for p, v in rss.items()]  # fmt: skip
    out += ["", *targets(cells, rss, plan)]
    return "\n".join(out) + "\n"


def targets(cells: dict[int, dict[str, Cell]], rss: dict[str, dict[str, float]], plan: Plan) -> list[str]:
    """Issue 9's targets, checked against this run (at the highest concurrency measured)."""
    c = max(cells)
    row = cells[c]
    if "gpuledger" not in row:
        return []
    d, g = row["direct"], row["gpuledger"]
    dt, gt = _pct(d.results, "ttft"), _pct(g.results, "ttft")
    rate = {n: len([r for r in x.results if not r.error]) / x.wall if x.wall else 0.0 for n, x in row.items()}
    lines = ["| target | measured | met |", "|---|---:|:-:|"]

    def add(name: str, value: str, ok: bool) -> None:
        lines.append(f"| {name} | {value} | {'yes' if ok else 'no'} |")

    add(f"added TTFT p50 ≤ 1 ms at {c} streams", f"{gt[50] - dt[50]:.1f} ms", gt[50] - dt[50] <= 1)
    add(f"added TTFT p99 ≤ 5 ms at {c} streams", f"{gt[99] - dt[99]:.1f} ms", gt[99] - dt[99] <= 5)
    ratio = rate["gpuledger"] / rate["direct"] if rate["direct"] else 0.0
    add(f"throughput ≥ 98% of direct at {c} streams", f"{100 * ratio:.0f}%", ratio >= 0.98)
    if "litellm" in row:
        lt = _pct(row["litellm"].results, "ttft")
        g99, l99 = max(gt[99] - dt[99], 0.1), lt[99] - dt[99]
        if math.isnan(l99):  # LiteLLM finished nothing in the window: its p99 is past the limit
            l99 = 1000 * plan.hard_stop_s - dt[99]
            add("≥ 5x lower added TTFT p99 than LiteLLM", f"≥ {l99 / g99:.1f}x (none done)", l99 / g99 >= 5)
        else:
            add("≥ 5x lower added TTFT p99 than LiteLLM", f"{l99 / g99:.1f}x", l99 / g99 >= 5)
        # CPU-seconds per request over every closed-loop window of the run.
        cpu = {n: sum(cells[k][n].cpu for k in cells) / max(1, sum(len(cells[k][n].results) for k in cells))
               for n in ("gpuledger", "litellm")}  # fmt: skip
        per = cpu["litellm"] / cpu["gpuledger"] if cpu["gpuledger"] else 0.0
        add("≥ 3x more requests per CPU-second than LiteLLM", f"{per:.1f}x", per >= 3)
    if "gpuledger" in rss:
        growth = rss["gpuledger"]["growth_pct"]
        add(f"RSS growth < 5% (10% → 100% of {rss['gpuledger']['requests']:,.0f} requests)",
            f"{growth:+.1f}%", growth < 5)
    return lines


async def run(plan: Plan, args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gpuledger-bench-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    otlp = await _otlp_sink()
    procs = start_all(tmp, args.speedup, tuple(args.paths.split(",")), otlp.url)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    log_path = results_dir / f"{started.replace(':', '')}-{'quick' if args.quick else 'full'}.log"

    def log(line: str) -> None:
        print(line, flush=True)
        with log_path.open("a") as fh:
            fh.write(line + "\n")

    try:
        async with make_session() as session:
            await wait_ready(session, procs, tmp)
            w = Workload(model=MODEL, max_tokens=args.max_tokens, stream=True)
            for name, p in procs.items():
                # Warm-up: lazy imports, and connection pools (client's and proxy's) as wide as the
                # highest concurrency, so no path pays for opening connections inside a window.
                n = plan.warm_litellm if name == "litellm" else max(plan.concurrencies)
                await closed_loop(session, p.url, with_headers(w, p), n, requests=n, hard_stop_s=plan.hard_stop_s)
                log(f"{name} ready at {p.url}")
            cells = await latency_phase(session, procs, plan, w, log)
            slo = await slo_phase(session, procs, plan, w, log)
            # Both proxies at once: memory growth doesn't depend on speed, and it halves the wait.
            counts = {"gpuledger": plan.rss_requests, "litellm": plan.rss_requests_litellm}
            names = [n for n in counts if n in procs]
            done = await asyncio.gather(*(rss_phase(session, procs[n], counts[n], log) for n in names))
            rss = dict(zip(names, done, strict=True))
    finally:
        for p in procs.values():
            p.stop()
        await otlp.runner.cleanup()
    meta = {"started": started, "mode": "quick" if args.quick else "full",
            "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
            "max_tokens": args.max_tokens, "speedup": args.speedup}  # fmt: skip
    table = report(cells, slo, rss, plan, meta)
    md = log_path.with_suffix(".md")
    md.write_text(table)
    print("\n" + table + f"\nwritten to {md} (process logs in {tmp})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the short version (< 3 minutes)")
    p.add_argument("--speedup", type=float, default=1.0, help="simulator time scale")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS))
    args = p.parse_args(argv)
    if not (ROOT / ".venv-litellm" / "bin" / "litellm").exists():
        print("LiteLLM is not installed: run bench/install_litellm.sh", file=sys.stderr)
        return 2
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    code: int = runner(run(QUICK if args.quick else FULL, args))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
