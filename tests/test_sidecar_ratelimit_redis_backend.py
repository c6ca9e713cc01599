"""The Redis backend on the real Redis (db 15): same decisions as the in-process GCRA, one round
trip per admission, all-or-nothing across scopes, and concurrency leases that expire when their
sidecar stops renewing them. Time is injected (passed to the scripts) except where noted."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.ratelimit.base import ScopeLimits
from sidecar.ratelimit.local import LocalBackend
from sidecar.ratelimit.redis_backend import RedisBackend

pytestmark = pytest.mark.redis


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingRedis(Redis):
    """Counts commands sent: with no pipelines, one command is one network round trip."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[CountingRedis]:
    client = CountingRedis.from_url(redis_url)
    assert isinstance(client, CountingRedis)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(client: CountingRedis) -> AsyncIterator[str]:
    prefix = f"{{test-rl-{uuid.uuid4().hex[:10]}}}:"
    yield prefix
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


def _backend(client: Redis, prefix: str, clock: Clock | None, ttl: float = 30.0) -> RedisBackend:
    return RedisBackend(client, prefix=prefix, lease_ttl_s=ttl, clock=clock)


async def test_same_decisions_as_the_in_process_backend(client: CountingRedis, prefix: str) -> None:
    """A random workload (arrivals, reservations, settlements) replayed on both backends."""
    rng = random.Random(6)
    clock = Clock()
    redis_b = _backend(client, prefix, clock)
    local_b = LocalBackend(clock)
    scopes = (
        ScopeLimits("kf:k1:chat", rpm=30, tpm=3000),
        ScopeLimits("k:k1", rpm=50, concurrency=5),
        ScopeLimits("f:chat", tpm=5000, gpm=20.0),
    )
    live: list[tuple[str, int, float]] = []
    admitted = 0
    last_beat = clock.now
    for step in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.05, 0.5, 2.0])
        if clock.now - last_beat >= 10.0:  # as the guard does for its live leases
            await redis_b.heartbeat([(scopes[1], lease) for lease, _, _ in live])
            last_beat = clock.now
        if live and rng.random() < 0.4:
            lease, reserved, gpu_reserved = live.pop(rng.randrange(len(live)))
            real, gpu = rng.randint(0, reserved + 50), rng.choice([0.0, 0.3, 2.5])
            await redis_b.settle(scopes, lease, 0, real - reserved, gpu - gpu_reserved)
            await local_b.settle(scopes, lease, 0, real - reserved, gpu - gpu_reserved)
            continue
        reserved, gpu_reserved = rng.randint(10, 400), rng.choice([0.0, 0.5, 3.0])
        lease = f"lease-{step}"
        got_r = await redis_b.acquire(scopes, reserved, lease, gpu_reserved)
        got_l = await local_b.acquire(scopes, reserved, lease, gpu_reserved)
        assert (got_r.allowed, got_r.scope_id, got_r.dimension) == (
            got_l.allowed,
            got_l.scope_id,
            got_l.dimension,
        ), f"step {step}"
        if got_r.allowed:
            admitted += 1
            live.append((lease, reserved, gpu_reserved))
            for q_r, q_l in ((got_r.requests, got_l.requests), (got_r.tokens, got_l.tokens)):
                assert q_r is not None and q_l is not None
                assert (q_r.limit, q_r.remaining) == (q_l.limit, q_l.remaining), f"step {step}"
                assert q_r.reset_s == pytest.approx(q_l.reset_s, abs=1e-6)
        else:
            assert got_r.retry_after_s == pytest.approx(got_l.retry_after_s, abs=0.002)
    assert 20 < admitted < 300  # the workload exercised both outcomes


async def test_one_round_trip_per_admission_and_all_or_nothing(
    client: CountingRedis, prefix: str
) -> None:
    clock = Clock()
    backend = _backend(client, prefix, clock)
    key = ScopeLimits("k:k1", rpm=10, tpm=10_000, concurrency=10)
    feature = ScopeLimits("f:chat", rpm=3)
    await backend.acquire((key, feature), 5, "warm-up")  # loads the script (EVALSHA miss)
    before = client.sent
    results = [await backend.acquire((key, feature), 5, f"l{i}") for i in range(6)]
    assert client.sent - before == 6
    assert [r.allowed for r in results] == [True, True, False, False, False, False]
    assert results[-1].scope_id == "f:chat" and results[-1].dimension == "requests"
    # The four refused requests charged nothing to the key: 3 admitted of its 10 RPM, 300 tokens
    # of 10,000 would read 9,985 if a refusal had reserved its 5 tokens.
    alone = await backend.acquire((key,), 5, "l-alone")
    assert alone.requests is not None and alone.requests.remaining == 10 - 4
    assert alone.tokens is not None and alone.tokens.remaining == 10_000 - 4 * 5
    assert await backend.leases_in_use("k:k1") == 4


async def test_reservation_settles_to_the_real_count(client: CountingRedis, prefix: str) -> None:
    clock = Clock()
    backend = _backend(client, prefix, clock)
    scope = (ScopeLimits("k:k1", tpm=1000),)
    assert (await backend.acquire(scope, 600, "a")).allowed
    assert not (await backend.acquire(scope, 600, "b")).allowed
    await backend.settle(scope, "a", 0, 100 - 600, 0.0)
    again = await backend.acquire(scope, 600, "c")
    assert again.allowed and again.tokens is not None and again.tokens.remaining == 300
    too_big = await backend.acquire(scope, 1001, "d")
    assert not too_big.allowed and too_big.retry_after_s is None


async def test_crashed_sidecars_leases_expire_renewed_ones_do_not(
    client: CountingRedis, prefix: str
) -> None:
    clock = Clock()
    scope = ScopeLimits("k:k1", concurrency=4)
    alive = _backend(client, prefix, clock, ttl=30.0)
    crashed = _backend(client, prefix, clock, ttl=30.0)
    assert (await alive.acquire((scope,), 0, "alive-1")).allowed
    for i in range(3):
        assert (await crashed.acquire((scope,), 0, f"crashed-{i}")).allowed
    refused = await alive.acquire((scope,), 0, "x")
    assert not refused.allowed and refused.dimension == "concurrency"
    # `crashed` stops heartbeating; `alive` renews its lease every 10 s for 40 s.
    for _ in range(4):
        clock.now += 10.0
        await alive.heartbeat([(scope, "alive-1")])
    assert await alive.leases_in_use("k:k1") == 1
    for i in range(3):
        assert (await alive.acquire((scope,), 0, f"new-{i}")).allowed
    assert not (await alive.acquire((scope,), 0, "y")).allowed
    await alive.settle((scope,), "new-0", 0, 0, 0.0)
    assert await alive.leases_in_use("k:k1") == 3


async def test_redis_time_is_the_default_clock(client: CountingRedis, prefix: str) -> None:
    backend = _backend(client, prefix, None)
    scope = (ScopeLimits("k:k1", rpm=2, concurrency=1),)
    first = await backend.acquire(scope, 0, "a")
    assert first.allowed and first.requests is not None and first.requests.remaining == 1
    assert not (await backend.acquire(scope, 0, "b")).allowed  # slot taken
    assert await backend.leases_in_use("k:k1") == 1
    await backend.settle(scope, "a", 0, 0, 0.0)
    assert (await backend.acquire(scope, 0, "c")).allowed
    assert not (await backend.acquire(scope, 0, "d")).allowed  # 2 RPM used
    ttl = await client.pttl(f"{prefix}k:k1:requests")
    assert 0 < ttl <= 61_000  # idle buckets vanish on their own


async def test_limit_change_keeps_the_units_in_use(client: CountingRedis, prefix: str) -> None:
    clock = Clock()
    backend = _backend(client, prefix, clock)
    assert (await backend.acquire((ScopeLimits("k:a", rpm=1),), 0, "")).allowed
    raised = await backend.acquire((ScopeLimits("k:a", rpm=10),), 0, "")
    assert raised.allowed and raised.requests is not None and raised.requests.remaining == 8
    assert not (await backend.acquire((ScopeLimits("k:a", rpm=2),), 0, "")).allowed
    clock.now += 30.0
    assert (await backend.acquire((ScopeLimits("k:a", rpm=2),), 0, "")).allowed
