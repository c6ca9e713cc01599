"""Shared vocabulary of the rate limiter: scopes, decisions, the backend protocol, OpenAI headers.

Every limit is a GCRA bucket over a one-minute period (`PERIOD_S`). A bucket of limit `L` holds
`L` units and refills continuously at `L` per minute; its state is one number, the *theoretical
arrival time* (TAT). `TAT - now` is how much of the bucket is in use, in seconds of refill:

* admit a cost `n` if `max(TAT, now) + n * T - now <= PERIOD_S` (with `T = PERIOD_S / L`);
* remaining = `(PERIOD_S - (TAT - now)) / T`; the bucket is back to full at `TAT`.

There is no window edge, so the fixed-window burst (a full limit just before the boundary and
another just after) cannot happen: over any interval `t` at most `L + L * t / PERIOD_S` units pass.
A settlement moves the TAT by the difference between the real and reserved cost (refunds never
below `now`: a bucket can't hold more than its limit). Tokens reserve prompt + `max_tokens`;
GPU-seconds reserve an estimate (see guard.py), so parallel requests cannot all slip through an
empty bucket before the first of them is charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

PERIOD_S = 60.0
# Floating-point slack so that exactly `L` unit costs fit in a bucket of `L`.
EPS_S = 1e-9

Dimension = Literal["requests", "tokens", "gpu_seconds", "concurrency"]
DIMENSIONS: tuple[Dimension, ...] = ("requests", "tokens", "gpu_seconds", "concurrency")


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """The limits of one scope, flattened from a `RateLimitPolicy` (None: no limit)."""

    scope_id: str  # "k:<key id>", "f:<feature>", "kf:<key id>:<feature>"; never a secret
    rpm: int | None = None
    tpm: int | None = None
    gpm: float | None = None  # GPU-seconds per minute
    concurrency: int | None = None


# Not frozen: a frozen dataclass's __init__ is several times slower, and this is the hot path.
@dataclass(slots=True)
class Quota:
    """One dimension's state for the OpenAI headers (of the scope with the least left)."""

    limit: float
    remaining: float
    reset_s: float


@dataclass(slots=True)
class Decision:
    allowed: bool
    requests: Quota | None = None
    tokens: Quota | None = None
    # Set when refused: which scope and dimension, and how long until a retry can pass
    # (None: never, the request alone is larger than the limit).
    scope_id: str | None = None
    dimension: Dimension | None = None
    limit: float | None = None
    retry_after_s: float | None = None


class Backend(Protocol):
    """Where bucket state lives. `acquire` is all-or-nothing over every scope given."""

    name: str

    async def acquire(
        self,
        scopes: tuple[ScopeLimits, ...],
        reserved_tokens: int,
        lease_id: str,
        reserved_gpu_seconds: float = 0.0,
    ) -> Decision: ...

    async def settle(
        self,
        scopes: tuple[ScopeLimits, ...],
        lease_id: str,
        request_delta: int,
        token_delta: int,
        gpu_delta: float,
    ) -> None:
        """Move the buckets by real - reserved cost (`request_delta` is -1 for a request released
        before it ran; negative token and GPU deltas refund), free the lease."""
        ...

    async def heartbeat(self, leases: list[tuple[ScopeLimits, str]]) -> None:
        """Extend the expiry of live concurrency leases (no-op where leases can't leak)."""
        ...


def quota(limit: float, used_s: float) -> Quota:
    """The headers' view of a bucket whose TAT is `used_s` ahead of now."""
    used_s = max(0.0, used_s)
    per_unit = PERIOD_S / limit
    remaining = max(0.0, math.floor((PERIOD_S - used_s) / per_unit + 1e-6))
    return Quota(limit=limit, remaining=remaining, reset_s=used_s)


def tighter(a: Quota | None, b: Quota) -> Quota:
    """The quota with less left (the one a client must respect)."""
    return b if a is None or b.remaining < a.remaining else a


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `120ms`, `1.5s`, `6m0s` (a Go duration string)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1.0:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if minutes >= 1:
        return f"{int(minutes)}m{text}s"
    return f"{text}s"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def quota_headers(requests: Quota | None, tokens: Quota | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, q in (("requests", requests), ("tokens", tokens)):
        if q is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = _number(q.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = _number(q.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(q.reset_s)
    return headers
