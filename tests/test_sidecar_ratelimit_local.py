"""The in-process backend: GCRA exactness, no boundary burst, reservations, all-or-nothing.

Time is an injected clock, so every property is checked exactly (no sleeps, no timing).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.ratelimit.base import PERIOD_S, ScopeLimits, format_duration, quota_headers
from sidecar.ratelimit.local import LocalBackend


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _admitted(backend: LocalBackend, scopes: tuple[ScopeLimits, ...], n: int, tokens: int = 0) -> int:
    return sum(backend.acquire_now(scopes, tokens).allowed for _ in range(n))


def test_burst_admits_exactly_the_limit_then_refills_at_the_rate() -> None:
    clock = Clock()
    backend = LocalBackend(clock)
    scope = (ScopeLimits("k:a", rpm=60),)
    assert _admitted(backend, scope, 200) == 60
    refused = backend.acquire_now(scope, 0)
    assert not refused.allowed and refused.dimension == "requests" and refused.scope_id == "k:a"
    assert refused.retry_after_s is not None and 0 < refused.retry_after_s <= 1.0
    clock.now += 1.0  # one emission interval: exactly one more request
    assert _admitted(backend, scope, 10) == 1


def test_no_burst_at_the_window_boundary() -> None:
    """The fixed-window exploit (a full limit just before a boundary, another just after) fails."""
    clock = Clock(59.999)
    backend = LocalBackend(clock)
    scope = (ScopeLimits("k:a", rpm=100),)
    assert _admitted(backend, scope, 100) == 100
    clock.now = 60.001  # "the next minute" for a fixed window
    assert _admitted(backend, scope, 100) == 0
    clock.now = 59.999 + 6.0  # 6 s later: 6 s x 100/min = 10 requests refilled, no more
    assert _admitted(backend, scope, 100) == 10


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 5.0, allow_nan=False), min_size=1, max_size=300),
)
def test_any_interval_admits_at_most_limit_plus_refill(limit: int, gaps: list[float]) -> None:
    """GCRA bound: over any interval of length t at most L + L*t/P requests pass."""
    clock = Clock(0.0)
    backend = LocalBackend(clock)
    scope = (ScopeLimits("k:a", rpm=limit),)
    times: list[float] = []
    for gap in gaps:
        clock.now += gap
        if backend.acquire_now(scope, 0).allowed:
            times.append(clock.now)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - start
            assert j - i + 1 <= limit + limit * span / PERIOD_S + 1e-6


async def test_tokens_reserve_then_settle_to_real_count() -> None:
    clock = Clock()
    backend = LocalBackend(clock)
    scope = (ScopeLimits("k:a", tpm=1000),)
    first = backend.acquire_now(scope, 600)
    assert first.allowed and first.tokens is not None and first.tokens.remaining == 400
    assert not backend.acquire_now(scope, 600).allowed  # 600 reserved + 600 > 1000
    await backend.settle(scope, "", 0, 100 - 600, 0.0)  # it used only 100
    second = backend.acquire_now(scope, 600)
    assert second.allowed and second.tokens is not None and second.tokens.remaining == 300


def test_reservation_larger_than_the_limit_never_fits() -> None:
    backend = LocalBackend(Clock())
    refused = backend.acquire_now((ScopeLimits("f:x", tpm=100),), 101)
    assert not refused.allowed and refused.retry_after_s is None and refused.limit == 100


def test_refused_request_consumes_nothing_in_any_scope() -> None:
    """All-or-nothing: the key scope has room, the feature scope does not; the key is not charged."""
    clock = Clock()
    backend = LocalBackend(clock)
    key = ScopeLimits("k:a", rpm=10, concurrency=5)
    feature = ScopeLimits("f:x", rpm=2)
    assert _admitted(backend, (key, feature), 5) == 2
    assert backend.in_use("k:a") == 2
    # Only the two admitted requests were charged to the key: 8 more fit on the key alone.
    assert _admitted(backend, (ScopeLimits("k:a", rpm=10),), 20) == 8


async def test_concurrency_slots_and_release() -> None:
    backend = LocalBackend(Clock())
    scope = (ScopeLimits("k:a", concurrency=2),)
    assert _admitted(backend, scope, 5) == 2
    refused = backend.acquire_now(scope, 0)
    assert refused.dimension == "concurrency"
    await backend.settle(scope, "", 0, 0, 0.0)
    assert backend.in_use("k:a") == 1
    assert _admitted(backend, scope, 5) == 1


async def test_gpu_seconds_charged_on_completion_block_until_drained() -> None:
    clock = Clock()
    backend = LocalBackend(clock)
    scope = (ScopeLimits("f:x", gpm=6.0),)
    assert backend.acquire_now(scope, 0).allowed
    await backend.settle(scope, "", 0, 0, 9.0)  # 9 GPU-s against 6/min: in debt
    refused = backend.acquire_now(scope, 0)
    assert not refused.allowed and refused.dimension == "gpu_seconds"
    assert refused.retry_after_s is not None
    clock.now += refused.retry_after_s + 0.01
    assert backend.acquire_now(scope, 0).allowed


async def test_gpu_seconds_reserved_at_admission_hold_back_parallel_requests() -> None:
    backend = LocalBackend(Clock())
    scope = (ScopeLimits("f:x", gpm=6.0),)
    # Each request is expected to cost 2.5 GPU-s: two fit in 6/min, a third in parallel doesn't.
    assert backend.acquire_now(scope, 0, 2.5).allowed
    assert backend.acquire_now(scope, 0, 2.5).allowed
    refused = backend.acquire_now(scope, 0, 2.5)
    assert not refused.allowed and refused.dimension == "gpu_seconds"
    await backend.settle(scope, "", 0, 0, 0.5 - 2.5)  # the first really cost 0.5: refunded
    assert backend.acquire_now(scope, 0, 2.5).allowed
    assert not backend.acquire_now(scope, 0, 2.5).allowed


async def test_release_before_running_refunds_the_request() -> None:
    backend = LocalBackend(Clock())
    scope = (ScopeLimits("k:a", rpm=1, tpm=100),)
    assert backend.acquire_now(scope, 50).allowed
    await backend.settle(scope, "", -1, -50, 0.0)
    assert backend.acquire_now(scope, 100).allowed


def test_openai_headers_and_duration_format() -> None:
    backend = LocalBackend(Clock())
    decision = backend.acquire_now((ScopeLimits("k:a", rpm=60, tpm=6000),), 100)
    headers = quota_headers(decision.requests, decision.tokens)
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5900",
        "x-ratelimit-reset-tokens": "1s",
    }
    assert format_duration(0.12) == "120ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360.0) == "6m0s"
    assert format_duration(73.25) == "1m13.25s"
    assert format_duration(0) == "0s"


def test_tightest_scope_drives_the_headers() -> None:
    backend = LocalBackend(Clock())
    decision = backend.acquire_now(
        (ScopeLimits("k:a", rpm=100), ScopeLimits("f:x", rpm=10)), 0
    )
    assert decision.requests is not None
    assert (decision.requests.limit, decision.requests.remaining) == (10, 9)


def test_limit_change_keeps_the_units_in_use() -> None:
    clock = Clock()
    backend = LocalBackend(clock)
    assert _admitted(backend, (ScopeLimits("k:a", rpm=1),), 3) == 1
    raised = backend.acquire_now((ScopeLimits("k:a", rpm=10),), 0)
    assert raised.allowed and raised.requests is not None and raised.requests.remaining == 8
    # 2 of 10 in use; lowered to 2 the bucket is full until a unit drains (30 s at 2/min).
    assert not backend.acquire_now((ScopeLimits("k:a", rpm=2),), 0).allowed
    clock.now += 30.0
    assert backend.acquire_now((ScopeLimits("k:a", rpm=2),), 0).allowed
