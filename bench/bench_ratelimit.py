"""Rate-limit check latency: in-process (target <= 20 us) and Redis (one round trip).

    .venv/bin/python -m bench.bench_ratelimit [--redis-url redis://127.0.0.1:6379/15] [-n 20000]

Measured, per admission (each followed by its settlement, untimed unless stated):
* `local acquire`: `LocalBackend.acquire_now` over 3 scopes (key x feature: RPM+TPM, key: RPM +
  concurrency, feature: TPM) — the check alone;
* `guard admit+settle (local)`: the whole `RateLimitGuard.admit` (scope lookup, check, OpenAI
  headers, admission object) plus `settle`, awaited on the event loop;
* `limits MovingWindow hit x4`: the `limits` package doing the same four RPM/TPM checks in memory
  (for the evaluation in `sidecar/ratelimit/__init__.py`; no reservation, settlement or slots);
* `redis acquire`: `RedisBackend.acquire` (one EVALSHA), and the commands sent per admission;
* `limits redis MovingWindow x4`: the same four checks with `limits`' async Redis storage.

Limits are set high enough that nothing is refused. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from gpuledger.contracts import (
    FeaturePolicy,
    KeyPolicy,
    PolicySnapshot,
    RateLimitPolicy,
    RateLimits,
    UsageRecord,
)
from sidecar.hooks import RequestContext
from sidecar.ratelimit import LocalBackend, RateLimitGuard, RedisBackend, ScopeLimits

BIG = 10**12
SCOPES = (
    ScopeLimits("kf:k1:chat", rpm=BIG, tpm=BIG),
    ScopeLimits("k:k1", rpm=BIG, concurrency=10**6),
    ScopeLimits("f:chat", tpm=BIG),
)


def stats(samples_ns: list[int]) -> dict[str, float]:
    us = sorted(s / 1000.0 for s in samples_ns)
    return {
        "min": us[0],
        "mean": statistics.fmean(us),
        "p50": us[len(us) // 2],
        "p99": us[int(len(us) * 0.99)],
    }


def bench_local(n: int) -> list[int]:
    backend = LocalBackend()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        backend.acquire_now(SCOPES, 100)
        out.append(clock() - t0)
        backend._slots.clear()  # release without timing it
    return out


def _policy() -> tuple[PolicySnapshot, RequestContext, UsageRecord]:
    key = KeyPolicy(id="k1", name="k", key_hash="0" * 64, features=["chat"], default_feature="chat")
    feature = FeaturePolicy(name="chat")
    snapshot = PolicySnapshot(
        keys=[key],
        features=[feature],
        rate_limits=[
            RateLimitPolicy(
                scope="key_feature",
                key_id="k1",
                feature="chat",
                limits=RateLimits(requests_per_minute=BIG, tokens_per_minute=BIG),
            ),
            RateLimitPolicy(
                scope="key",
                key_id="k1",
                limits=RateLimits(requests_per_minute=BIG, concurrent_requests=10**6),
            ),
            RateLimitPolicy(scope="feature", feature="chat", limits=RateLimits(tokens_per_minute=BIG)),
        ],
    )
    ctx = RequestContext(
        request_id="r",
        key=key,
        feature=feature,
        model="tiny",
        engine="local",
        stream=False,
        prompt_tokens_estimate=50,
        max_output_tokens=100,
        started_at=datetime.now(UTC),
    )
    record = UsageRecord(
        id="r", feature="chat", model="tiny", upstream="local", started_at=datetime.now(UTC),
        input_tokens=50, output_tokens=20,
    )  # fmt: skip
    return snapshot, ctx, record


async def bench_guard(n: int) -> list[int]:
    snapshot, ctx, record = _policy()
    guard = RateLimitGuard(lambda: snapshot)
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        ctx.response_headers = {}
        t0 = clock()
        admission = await guard.admit(ctx)
        assert admission is not None
        await admission.settle(record)
        out.append(clock() - t0)
    return out


def bench_limits_memory(n: int) -> list[int]:
    from limits import RateLimitItemPerMinute
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerMinute(10**9)
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        limiter.hit(item, "kf:k1:chat", "rpm")
        limiter.hit(item, "kf:k1:chat", "tpm")  # cost=150 would store 150 entries
        limiter.hit(item, "k:k1", "rpm")
        limiter.hit(item, "f:chat", "tpm")
        out.append(clock() - t0)
    return out


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> list[int]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        await call(i)
        out.append(clock() - t0)
    return out


async def bench_redis(url: str, n: int) -> dict[str, Any]:
    client = Redis.from_url(url)
    sent = 0
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return await original(*args, **kwargs)  # type: ignore[no-untyped-call]

    client.execute_command = counting  # type: ignore[method-assign]
    prefix = f"{{bench-rl-{uuid.uuid4().hex[:8]}}}:"
    backend = RedisBackend(client, prefix=prefix)
    await backend.acquire(SCOPES, 100, "warm")  # loads the script
    before = sent

    async def admit(i: int) -> None:
        await backend.acquire(SCOPES, 100, f"l{i}")

    acquire = await timed(n, admit)
    per_admission = (sent - before) / n

    async def admit_settle(i: int) -> None:
        await backend.acquire(SCOPES, 100, f"s{i}")
        await backend.settle(SCOPES, f"s{i}", 0, -80, 0.0)

    both = await timed(n, admit_settle)

    from limits import RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(10**6)

    async def limits_hits(i: int) -> None:
        await limiter.hit(item, prefix, "kf", "rpm")
        await limiter.hit(item, prefix, "kf", "tpm")
        await limiter.hit(item, prefix, "k", "rpm")
        await limiter.hit(item, prefix, "f", "tpm")

    lim = await timed(n, limits_hits)
    await limiter.clear(item, prefix, "kf", "rpm")
    for args in (("kf", "tpm"), ("k", "rpm"), ("f", "tpm")):
        await limiter.clear(item, prefix, *args)
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    return {"acquire": acquire, "both": both, "limits": lim, "per_admission": per_admission}


def row(name: str, samples: list[int], note: str = "") -> str:
    s = stats(samples)
    return f"| {name} | {s['min']:.1f} | {s['p50']:.1f} | {s['mean']:.1f} | {s['p99']:.1f} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("GPULEDGER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args()
    n = args.n
    bench_local(2000)  # warm up
    rows = [
        row("local acquire (3 scopes, 5 limits)", bench_local(n)),
        row("guard admit+settle (local)", asyncio.run(bench_guard(n)), "headers, lookup, settle"),
        row("`limits` MovingWindow, memory, 4 hits", bench_limits_memory(n), "no reserve/settle/slots"),
    ]
    if not args.no_redis:
        r = asyncio.run(bench_redis(args.redis_url, max(1000, n // 10)))
        rows += [
            row("redis acquire (3 scopes, 5 limits)", r["acquire"], f"{r['per_admission']:.2f} commands/admission"),
            row("redis acquire + settle", r["both"], "2 round trips"),
            row("`limits` MovingWindow, redis, 4 hits", r["limits"], "4 round trips"),
        ]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, n={n}")  # fmt: skip
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| check | min µs | p50 µs | mean µs | p99 µs | note |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
