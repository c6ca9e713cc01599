"""The rate-limit guard: scopes from the policy, OpenAI headers, 429s, settlement, and what it does
when Redis is down (fail open to the in-process limiter, or fail closed). Redis is the real one;
"Redis down" is a port nothing listens on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis

from gpuledger.contracts import (
    FeaturePolicy,
    KeyPolicy,
    PolicySnapshot,
    RateLimitPolicy,
    RateLimits,
    UsageRecord,
)
from sidecar.errors import RateLimited, UpstreamUnavailable
from sidecar.hooks import RequestContext
from sidecar.ratelimit.guard import RateLimitGuard, build_rate_limit_guard
from sidecar.ratelimit.local import LocalBackend
from sidecar.ratelimit.redis_backend import RedisBackend
from sidecar.settings import Settings
from tests.conftest import free_port

KEY = KeyPolicy(id="key-1", name="k", key_hash="0" * 64, features=["chat"], default_feature="chat")
FEATURE = FeaturePolicy(name="chat")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy(*rules: RateLimitPolicy) -> PolicySnapshot:
    return PolicySnapshot(version="1", keys=[KEY], features=[FEATURE], rate_limits=list(rules))


def rule(scope: str, **limits: float) -> RateLimitPolicy:
    return RateLimitPolicy(
        scope=scope,
        key_id=KEY.id if "key" in scope else None,
        feature=FEATURE.name if "feature" in scope else None,
        limits=RateLimits(**limits),
    )


def ctx(prompt: int = 10, max_out: int = 90) -> RequestContext:
    return RequestContext(
        request_id=uuid.uuid4().hex,
        key=KEY,
        feature=FEATURE,
        model="tiny",
        engine="local",
        stream=False,
        prompt_tokens_estimate=prompt,
        max_output_tokens=max_out,
        started_at=datetime.now(UTC),
    )


def record(input_tokens: int, output_tokens: int, gpu_seconds: float = 0.0) -> UsageRecord:
    return UsageRecord(
        id=uuid.uuid4().hex,
        key_id=KEY.id,
        feature=FEATURE.name,
        model="tiny",
        upstream="local",
        started_at=datetime.now(UTC),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        gpu_seconds=gpu_seconds,
    )


def local_guard(snapshot: PolicySnapshot, clock: Clock | None = None) -> RateLimitGuard:
    return RateLimitGuard(lambda: snapshot, LocalBackend(clock or Clock()))


async def test_no_rule_no_admission_no_headers() -> None:
    guard = local_guard(policy(RateLimitPolicy(scope="key", key_id="other", limits=RateLimits(requests_per_minute=1))))
    c = ctx()
    assert await guard.admit(c) is None
    assert c.response_headers == {}


async def test_headers_on_every_admitted_request_and_429_when_exhausted() -> None:
    guard = local_guard(policy(rule("key", requests_per_minute=2, tokens_per_minute=1000)))
    first = ctx()
    await guard.admit(first)
    assert first.response_headers["x-ratelimit-limit-requests"] == "2"
    assert first.response_headers["x-ratelimit-remaining-requests"] == "1"
    assert first.response_headers["x-ratelimit-reset-requests"] == "30s"
    assert first.response_headers["x-ratelimit-remaining-tokens"] == "900"
    assert first.response_headers["x-ratelimit-reset-tokens"] == "6s"
    await guard.admit(ctx())
    refused = ctx()
    with pytest.raises(RateLimited) as info:
        await guard.admit(refused)
    err = info.value
    assert (err.status, err.code, err.type) == (429, "rate_limit_exceeded", "rate_limit_error")
    assert err.headers["retry-after"] == "30"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "30s"
    assert refused.response_headers["x-ratelimit-limit-requests"] == "2"
    assert "key key-1" in err.message and "requests per minute" in err.message
    assert err.tier == "medium"


async def test_request_larger_than_the_token_limit_says_so() -> None:
    guard = local_guard(policy(rule("feature", tokens_per_minute=50)))
    with pytest.raises(RateLimited) as info:
        await guard.admit(ctx(prompt=10, max_out=90))
    assert "reserves 100 tokens" in info.value.message and "feature chat" in info.value.message


async def test_settlement_refunds_unused_reservation() -> None:
    guard = local_guard(policy(rule("key_feature", tokens_per_minute=1000)))
    admission = await guard.admit(ctx(prompt=100, max_out=500))
    assert admission is not None
    await admission.settle(record(100, 20))
    await admission.settle(record(100, 20))  # settled once only
    later = ctx(prompt=0, max_out=10)
    await guard.admit(later)
    assert later.response_headers["x-ratelimit-remaining-tokens"] == str(1000 - 120 - 10)


async def test_gpu_seconds_limit_holds_parallel_requests_once_the_cost_is_known() -> None:
    """Charged only at the end, a GPU-seconds limit would let any number of parallel requests
    through an empty bucket. Once a request of the feature has been measured, each admission
    holds back its tokens at the learned cost until it settles."""
    guard = local_guard(policy(rule("feature", gpu_seconds_per_minute=10.0)))
    first = await guard.admit(ctx(prompt=10, max_out=90))  # nothing known yet: reserves nothing
    assert first is not None
    await first.settle(record(10, 90, gpu_seconds=2.0))  # 0.02 GPU-s a token
    # 8 GPU-s left; each request reserves 100 tokens x 0.02 = 2 GPU-s: four fit, the fifth waits.
    running = [await guard.admit(ctx(prompt=10, max_out=90)) for _ in range(4)]
    with pytest.raises(RateLimited) as info:
        await guard.admit(ctx(prompt=10, max_out=90))
    assert "GPU-seconds per minute" in info.value.message
    for admission in running:  # each used a quarter of its reservation: three fit again
        assert admission is not None
        await admission.settle(record(10, 15, gpu_seconds=0.5))
    assert [await guard.admit(ctx(prompt=10, max_out=90)) for _ in range(3)]
    with pytest.raises(RateLimited):
        await guard.admit(ctx(prompt=10, max_out=90))


async def test_gpu_reservation_never_exceeds_the_limit() -> None:
    """An over-estimate delays a request until the bucket has drained; it never refuses it for
    good."""
    clock = Clock()
    guard = local_guard(policy(rule("feature", gpu_seconds_per_minute=1.0)), clock)
    first = await guard.admit(ctx())
    assert first is not None
    await first.settle(record(10, 90, gpu_seconds=0.5))  # learned: 0.005 GPU-s a token
    big = ctx(prompt=100, max_out=4000)  # estimated 20.5 GPU-s against 1 a minute
    with pytest.raises(RateLimited) as info:  # waits for the first's 0.5 GPU-s to drain...
        await guard.admit(big)
    assert info.value.retry_after_s == pytest.approx(30.0, abs=0.01)
    clock.now += info.value.retry_after_s + 0.01
    assert await guard.admit(ctx(prompt=100, max_out=4000)) is not None  # ... then passes


async def test_release_when_a_later_guard_refuses_consumes_nothing() -> None:
    guard = local_guard(policy(rule("key", requests_per_minute=1, concurrent_requests=1)))
    admission = await guard.admit(ctx())
    assert admission is not None
    await admission.settle(None)
    assert await guard.admit(ctx()) is not None


async def test_policy_change_applies_to_the_next_request() -> None:
    current = [policy(rule("key", requests_per_minute=1))]
    guard = RateLimitGuard(lambda: current[0], LocalBackend(Clock()))
    await guard.admit(ctx())
    with pytest.raises(RateLimited):
        await guard.admit(ctx())
    current[0] = policy(rule("key", requests_per_minute=10))
    c = ctx()
    await guard.admit(c)
    assert c.response_headers["x-ratelimit-limit-requests"] == "10"


@pytest.mark.redis
async def test_redis_down_fails_open_to_the_local_limiter() -> None:
    registry = CollectorRegistry()
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/15", socket_connect_timeout=0.5)
    guard = RateLimitGuard(
        lambda: policy(rule("key", requests_per_minute=2)),
        RedisBackend(dead),
        registry=registry,
        on_backend_error="open",
        retry_backend_s=60.0,
    )
    assert await guard.admit(ctx()) is not None
    assert await guard.admit(ctx()) is not None  # Redis skipped for retry_backend_s
    with pytest.raises(RateLimited):
        await guard.admit(ctx())  # the local limiter still limits
    value = registry.get_sample_value
    assert value("gpuledger_ratelimit_backend_errors_total", {"backend": "redis"}) == 1
    assert value("gpuledger_ratelimit_fallback_total") == 3
    await guard.aclose()


@pytest.mark.redis
async def test_redis_down_fails_closed_with_503() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/15", socket_connect_timeout=0.5)
    guard = RateLimitGuard(
        lambda: policy(rule("key", requests_per_minute=2)),
        RedisBackend(dead),
        on_backend_error="closed",
    )
    with pytest.raises(UpstreamUnavailable) as info:
        await guard.admit(ctx())
    assert (info.value.status, info.value.code) == (503, "rate_limiter_unavailable")
    assert "redis://" not in info.value.message
    await guard.aclose()


@pytest.fixture
async def redis_guard(redis_url: str) -> AsyncIterator[tuple[RateLimitGuard, RedisBackend]]:
    prefix = f"{{test-guard-{uuid.uuid4().hex[:10]}}}:"
    clock = Clock()
    backend = RedisBackend(Redis.from_url(redis_url), prefix=prefix, lease_ttl_s=30.0, clock=clock)
    guard = RateLimitGuard(
        lambda: policy(rule("key", concurrent_requests=2, tokens_per_minute=10_000)),
        backend,
        heartbeat_s=3600.0,  # renewed by hand below
    )
    yield guard, backend
    keys = [k async for k in backend.client.scan_iter(match=f"{prefix}*")]
    if keys:
        await backend.client.delete(*keys)
    await guard.aclose()


@pytest.mark.redis
async def test_live_requests_keep_their_slots_via_heartbeat(
    redis_guard: tuple[RateLimitGuard, RedisBackend],
) -> None:
    guard, backend = redis_guard
    clock = backend._clock
    assert isinstance(clock, Clock)
    running = [await guard.admit(ctx()) for _ in range(2)]
    with pytest.raises(RateLimited) as info:
        await guard.admit(ctx())
    assert "concurrent requests" in info.value.message
    for _ in range(5):  # 50 s of a long request, renewed every 10 s: its slots stay taken
        clock.now += 10.0
        await guard.heartbeat()
    assert await backend.leases_in_use("k:key-1") == 2
    for admission in running:
        assert admission is not None
        await admission.settle(record(10, 10))
    assert await backend.leases_in_use("k:key-1") == 0
    assert await guard.admit(ctx()) is not None


def test_settings_pick_the_backend(redis_url: str) -> None:
    snapshot = policy()
    local = build_rate_limit_guard(Settings(), lambda: snapshot, CollectorRegistry())
    assert local.backend.name == "local"
    shared = build_rate_limit_guard(
        Settings(redis_url=redis_url, ratelimit_on_redis_error="closed", ratelimit_lease_ttl_s=9),
        lambda: snapshot,
        CollectorRegistry(),
    )
    assert shared.backend.name == "redis" and shared.on_backend_error == "closed"
    assert shared.heartbeat_s == 3.0
    # A bounded pool that queues admissions rather than opening a socket per request.
    assert isinstance(shared.backend, RedisBackend)
    pool = shared.backend.client.connection_pool
    assert isinstance(pool, BlockingConnectionPool) and pool.max_connections == 32


@pytest.mark.redis
async def test_heartbeat_keeps_slots_and_a_killed_sidecars_slots_expire(redis_url: str) -> None:
    """Real time (Redis TIME), a 1 s lease: sidecar A's heartbeat loop keeps its two slots past the
    lease time; once A dies (no heartbeat, no settlement) sidecar B gets them after the lease."""
    prefix = f"{{test-kill-{uuid.uuid4().hex[:10]}}}:"
    snapshot = policy(rule("key", concurrent_requests=2))

    def sidecar(heartbeat_s: float) -> RateLimitGuard:
        backend = RedisBackend(Redis.from_url(redis_url), prefix=prefix, lease_ttl_s=1.0)
        return RateLimitGuard(lambda: snapshot, backend, heartbeat_s=heartbeat_s)

    a, b = sidecar(0.2), sidecar(0.2)
    try:
        held = [await a.admit(ctx()) for _ in range(2)]
        assert all(held)
        await asyncio.sleep(2.0)  # twice the lease: only A's heartbeats keep the slots
        with pytest.raises(RateLimited):
            await b.admit(ctx())
        await a.aclose()  # A is killed: its heartbeat stops, its requests never settle
        killed_at = time.monotonic()
        admitted = None
        while admitted is None and time.monotonic() - killed_at < 10.0:
            try:
                admitted = await b.admit(ctx())
            except RateLimited:
                await asyncio.sleep(0.1)
        assert admitted is not None, "the dead sidecar's slots never expired"
        assert time.monotonic() - killed_at > 0.5  # not before its lease ran out
        await admitted.settle(None)
    finally:
        client = Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await b.aclose()
