"""Async load generator for OpenAI-compatible endpoints: closed loop and open loop (Poisson).

Closed loop keeps `concurrency` requests in flight; open loop starts requests at exponentially
distributed intervals (a Poisson process at `rate` per second) whatever the server does, which is
what exposes queueing. Each request records client-side TTFT (first SSE event), end-to-end time,
output tokens (from `usage`) and its error, if any.

The client must stay cheap, since it shares the machine with what it measures: streamed bodies
are read in whatever pieces arrive and only the final usage event is parsed.

`python -m bench.loadgen --url http://127.0.0.1:8001 --concurrency 64 --requests 2000 --stream`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass(frozen=True, slots=True)
class Workload:
    model: str = "llama-3.1-8b"
    prompt_chars: int = 800  # ~200 tokens
    max_tokens: int = 32
    stream: bool = True
    api_key: str | None = None
    path: str = "/v1/chat/completions"
    extra_headers: dict[str, str] = field(default_factory=dict)

    def body(self, i: int) -> bytes:
        # A distinct prefix per request keeps the engine's prefix cache from flattering anyone
        # (callers pass numbers unique across the run: see `_numbers`).
        text = (f"request {i}: " + "please summarise the ledger " * (self.prompt_chars // 28 + 1))
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
            "stream": self.stream,
        }
        if self.path.endswith("/chat/completions"):
            body["messages"] = [{"role": "user", "content": text[: self.prompt_chars]}]
        else:
            body["prompt"] = text[: self.prompt_chars]
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", **self.extra_headers}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


@dataclass(slots=True)
class Result:
    start: float
    ttft: float | None = None
    e2e: float = 0.0
    output_tokens: int = 0
    error: str | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    errors: int
    duration_s: float
    rps: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float]
    e2e_ms: dict[str, float]
    first_error: str | None

    def line(self) -> str:
        t, e = self.ttft_ms, self.e2e_ms
        return (f"{self.requests} req, {self.errors} err, {self.rps:.1f} req/s, "
                f"{self.output_tokens_per_s:.0f} tok/s, TTFT p50/p95/p99 {t['p50']:.1f}/{t['p95']:.1f}/"
                f"{t['p99']:.1f} ms, e2e p50/p95/p99 {e['p50']:.1f}/{e['p95']:.1f}/{e['p99']:.1f} ms")  # fmt: skip


def summarize(results: Sequence[Result], duration_s: float) -> Summary:
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]

    def pcts(xs: list[float]) -> dict[str, float]:
        return {f"p{q}": percentile(xs, q) * 1000 for q in (50, 95, 99)}

    return Summary(
        requests=len(results),
        errors=len(errors),
        duration_s=duration_s,
        rps=len(ok) / duration_s if duration_s else 0.0,
        output_tokens_per_s=sum(r.output_tokens for r in ok) / duration_s if duration_s else 0.0,
        ttft_ms=pcts([r.ttft for r in ok if r.ttft is not None]),
        e2e_ms=pcts([r.e2e for r in ok]),
        first_error=errors[0] if errors else None,
    )


def _usage_tokens(tail: bytes) -> int:
    idx = tail.rfind(b'"usage":')
    if idx < 0:
        return 0
    start = tail.rfind(b"data: ", 0, idx)
    end = tail.find(b"\n", idx)
    try:
        event = orjson.loads(tail[start + 6 : end if end > 0 else None])
        return int((event.get("usage") or {}).get("completion_tokens", 0))
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        return 0


async def one_request(session: aiohttp.ClientSession, url: str, w: Workload, i: int) -> Result:
    res = Result(start=time.perf_counter())
    try:
        async with session.post(url, data=w.body(i), headers=w.headers()) as resp:
            if resp.status != 200:
                res.error = f"HTTP {resp.status}: {(await resp.read())[:200]!r}"
            elif w.stream:
                tail = b""
                async for piece in resp.content.iter_any():
                    if res.ttft is None and b"data: " in piece:
                        res.ttft = time.perf_counter() - res.start
                    tail = (tail + piece)[-4096:]
                if not tail.rstrip().endswith(b"data: [DONE]"):
                    res.error = "stream ended without [DONE]"
                res.output_tokens = _usage_tokens(tail)
            else:
                body = orjson.loads(await resp.read())
                res.ttft = time.perf_counter() - res.start
                res.output_tokens = int(body["usage"]["completion_tokens"])
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, KeyError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:200]
    res.e2e = time.perf_counter() - res.start
    return res


def _numbers() -> int:
    """A fresh block of request numbers, so no two windows (or paths) send the same prompt."""
    return random.getrandbits(48) << 16


def make_session(timeout_s: float = 120.0) -> aiohttp.ClientSession:
    # No connection cap: the generator, not the pool, sets the concurrency.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s))


async def closed_loop(
    session: aiohttp.ClientSession, base_url: str, w: Workload, concurrency: int,
    requests: int | None = None, duration_s: float | None = None, hard_stop_s: float | None = None,
) -> tuple[list[Result], float]:  # fmt: skip
    """`concurrency` workers, back to back, until `requests` are done or `duration_s` passed.

    Requests started before `duration_s` run to completion, unless `hard_stop_s` (from the start)
    passes first: those still in flight then count as errors ("unfinished"), so a path too slow
    to finish its window cannot stretch a run without bound.
    """
    url = base_url.rstrip("/") + w.path
    results: list[Result] = []
    first = _numbers()
    counter = iter(range(first, first + (requests if requests is not None else 1 << 62)))
    t0 = time.perf_counter()
    stop_at = t0 + duration_s if duration_s is not None else float("inf")
    in_flight: dict[int, float] = {}

    async def worker(wid: int) -> None:
        for i in counter:
            if time.perf_counter() >= stop_at:
                return
            in_flight[wid] = time.perf_counter()
            results.append(await one_request(session, url, w, i))
            del in_flight[wid]

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(worker(k)) for k in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=hard_stop_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    now = time.perf_counter()
    results += [Result(start=s, e2e=now - s, error="unfinished at the time limit") for s in in_flight.values()]
    return results, now - t0


async def open_loop(
    session: aiohttp.ClientSession, base_url: str, w: Workload, rate: float, duration_s: float,
    max_in_flight: int = 2048, seed: int = 0,
) -> tuple[list[Result], float]:  # fmt: skip
    """Poisson arrivals at `rate`/s for `duration_s`; arrivals beyond `max_in_flight` fail."""
    url = base_url.rstrip("/") + w.path
    rng = random.Random(seed)
    results: list[Result] = []
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    next_at = t0
    i = _numbers()

    async def fire(n: int) -> None:
        results.append(await one_request(session, url, w, n))

    while True:
        next_at += rng.expovariate(rate)
        if next_at - t0 >= duration_s:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            results.append(Result(start=time.perf_counter(), error="client: too many in flight"))
            continue
        task = asyncio.get_running_loop().create_task(fire(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)
    return results, time.perf_counter() - t0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL without /v1")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--api-key")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--rate", type=float, help="open loop at this many requests/s (else closed loop)")
    p.add_argument("--duration", type=float, default=10.0, help="open-loop seconds")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt-chars", type=int, default=800)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--completions", action="store_true", help="use /v1/completions")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    w = Workload(model=args.model, prompt_chars=args.prompt_chars, max_tokens=args.max_tokens,
                 stream=args.stream, api_key=args.api_key,
                 path="/v1/completions" if args.completions else "/v1/chat/completions")  # fmt: skip
    async with make_session() as session:
        if args.rate:
            results, wall = await open_loop(session, args.url, w, args.rate, args.duration)
        else:
            results, wall = await closed_loop(session, args.url, w, args.concurrency, args.requests)
    s = summarize(results, wall)
    print(s.line())
    if s.first_error:
        print(f"first error: {s.first_error}")
    return 1 if s.errors else 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    code: int = runner(_main(args))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
