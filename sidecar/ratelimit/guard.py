"""`RateLimitGuard`: the medium-tier guard (RPM, TPM, concurrency, GPU-seconds per minute).

Per request: look up the scopes that apply (key, feature, key x feature; memoised per policy
snapshot), admit against all of them in one backend call, put OpenAI's `x-ratelimit-*` headers
on the response, and return an admission that settles the token and GPU-seconds reservations to
the real counts and frees the concurrency lease when the request ends. A request refused here,
or released because a later guard refused it, consumes no quota.

Redis errors: `on_backend_error="open"` admits against the in-process fallback (limits then hold
per replica, not fleet-wide) and skips Redis for `retry_backend_s` before trying it again;
`"closed"` refuses with 503 `rate_limiter_unavailable`. Both are counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gpuledger.contracts import PolicySnapshot, RateLimitPolicy, UsageRecord
from sidecar.background import serve_until_cancelled
from sidecar.budget_state import RateLearner
from sidecar.errors import RateLimited, UpstreamUnavailable
from sidecar.hooks import RequestContext
from sidecar.ratelimit.base import (
    PERIOD_S,
    Backend,
    Decision,
    Quota,
    ScopeLimits,
    quota_headers,
)
from sidecar.ratelimit.local import LocalBackend
from sidecar.ratelimit.redis_backend import RedisBackend
from sidecar.settings import Settings

log = logging.getLogger(__name__)

OnBackendError = Literal["open", "closed"]
# What a shared backend raises when it is unreachable or broken.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)

_UNITS = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "gpu_seconds": "GPU-seconds per minute",
    "concurrency": "concurrent requests",
}


def _scope(rule: RateLimitPolicy) -> tuple[str, str] | None:
    """(scope id, words for messages) of a policy rule, or None if it names nothing."""
    if rule.scope == "key" and rule.key_id:
        return f"k:{rule.key_id}", f"key {rule.key_id}"
    if rule.scope == "feature" and rule.feature:
        return f"f:{rule.feature}", f"feature {rule.feature}"
    if rule.scope == "key_feature" and rule.key_id and rule.feature:
        return f"kf:{rule.key_id}:{rule.feature}", f"key {rule.key_id} in feature {rule.feature}"
    return None


class _Index:
    """The scopes of one policy snapshot, memoised per (key id, feature)."""

    def __init__(self, snapshot: PolicySnapshot) -> None:
        self.snapshot = snapshot
        self.rules: dict[str, ScopeLimits] = {}
        self.words: dict[str, str] = {}
        for rule in snapshot.rate_limits:
            named = _scope(rule)
            lim = rule.limits
            if named is None or not (
                lim.requests_per_minute
                or lim.tokens_per_minute
                or lim.gpu_seconds_per_minute
                or lim.concurrent_requests
            ):
                continue
            scope_id, words = named
            self.words[scope_id] = words
            self.rules[scope_id] = ScopeLimits(
                scope_id=scope_id,
                rpm=lim.requests_per_minute,
                tpm=lim.tokens_per_minute,
                gpm=lim.gpu_seconds_per_minute,
                concurrency=lim.concurrent_requests,
            )
        self._memo: dict[tuple[str, str], tuple[ScopeLimits, ...]] = {}

    def scopes(self, key_id: str, feature: str) -> tuple[ScopeLimits, ...]:
        found = self._memo.get((key_id, feature))
        if found is None:
            ids = (f"kf:{key_id}:{feature}", f"k:{key_id}", f"f:{feature}")
            found = tuple(self.rules[i] for i in ids if i in self.rules)
            self._memo[(key_id, feature)] = found
        return found


class RateLimitAdmission:
    __slots__ = (
        "_backend",
        "_gpu_cost",
        "_guard",
        "_lease_id",
        "_reserved",
        "_reserved_gpu",
        "_scopes",
        "_settled",
    )

    def __init__(
        self,
        guard: RateLimitGuard,
        backend: Backend,
        scopes: tuple[ScopeLimits, ...],
        reserved: int,
        lease_id: str,
        reserved_gpu: float = 0.0,
        gpu_cost: RateLearner | None = None,
    ) -> None:
        self._guard = guard
        self._backend = backend
        self._scopes = scopes
        self._reserved = reserved
        self._lease_id = lease_id
        self._reserved_gpu = reserved_gpu
        self._gpu_cost = gpu_cost
        self._settled = False

    async def settle(self, record: UsageRecord | None) -> None:
        if self._settled:
            return
        self._settled = True
        self._guard._live.pop(self._lease_id, None)
        if record is None:
            requests, tokens, gpu = -1, -self._reserved, -self._reserved_gpu
        else:
            tokens = record.input_tokens + record.output_tokens - self._reserved
            requests, gpu = 0, record.gpu_seconds - self._reserved_gpu
            if self._gpu_cost is not None:
                self._gpu_cost.observe(record)
        if requests == 0 and not any(s.tpm or s.gpm or s.concurrency for s in self._scopes):
            return  # requests-per-minute only: nothing moves after admission
        try:
            await self._backend.settle(self._scopes, self._lease_id, requests, tokens, gpu)
        except BACKEND_ERRORS as exc:
            # The reservation stays charged (conservative) and the lease lapses on its own.
            self._guard._backend_failed(self._backend, exc, "settle")


class RateLimitGuard:
    name = "ratelimit"

    def __init__(
        self,
        policy: Callable[[], PolicySnapshot],
        backend: Backend | None = None,
        *,
        registry: CollectorRegistry | None = None,
        on_backend_error: OnBackendError = "open",
        fallback: LocalBackend | None = None,
        heartbeat_s: float = 10.0,
        retry_backend_s: float = 1.0,
    ) -> None:
        self._policy = policy
        self.fallback = fallback or LocalBackend()
        self.backend: Backend = backend or self.fallback
        self.on_backend_error = on_backend_error
        self.heartbeat_s = heartbeat_s
        self.retry_backend_s = retry_backend_s
        self._index: _Index | None = None
        # Lease ids: unique across replicas (random per guard) and cheap (a counter) per request.
        self._lease_prefix = f"{os.urandom(6).hex()}-"
        self._leases = 0
        self._down_until = 0.0
        # Live admissions holding concurrency leases on the shared backend: lease id -> scopes.
        self._live: dict[str, tuple[ScopeLimits, ...]] = {}
        # GPU-seconds per token, per feature, for the GPU-seconds-per-minute reservations.
        self._gpu_costs: dict[str, RateLearner] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        registry = registry if registry is not None else CollectorRegistry()
        self.backend_errors = Counter(
            "gpuledger_ratelimit_backend_errors",
            "Rate-limit backend calls that failed",
            ["backend"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "gpuledger_ratelimit_fallback",
            "Admissions decided by the in-process limiter because the shared backend failed",
            registry=registry,
        )

    def scopes(self, key_id: str, feature: str) -> tuple[ScopeLimits, ...]:
        snapshot = self._policy()
        index = self._index
        if index is None or index.snapshot is not snapshot:
            index = self._index = _Index(snapshot)
        return index.scopes(key_id, feature)

    async def admit(self, ctx: RequestContext) -> RateLimitAdmission | None:
        scopes = self.scopes(ctx.key.id, ctx.feature.name)
        if not scopes:
            return None
        reserved = ctx.reserved_tokens
        needs_lease = any(s.concurrency for s in scopes)
        lease_id = ""
        if needs_lease:
            self._leases += 1
            lease_id = f"{self._lease_prefix}{self._leases:x}"
        backend = self.backend
        if backend is not self.fallback and time.monotonic() < self._down_until:
            backend = self._degraded()
        gpu_cost, reserved_gpu = self._gpu_reservation(scopes, ctx.feature.name, reserved)
        try:
            decision = await backend.acquire(scopes, reserved, lease_id, reserved_gpu)
        except BACKEND_ERRORS as exc:
            self._backend_failed(backend, exc, "admit")
            backend = self._degraded()
            decision = await backend.acquire(scopes, reserved, lease_id, reserved_gpu)
        if not decision.allowed:
            raise self._refusal(decision, reserved, ctx.response_headers)
        ctx.response_headers.update(quota_headers(decision.requests, decision.tokens))
        if needs_lease and backend is not self.fallback:
            self._live[lease_id] = scopes
            self._ensure_heartbeat()
        return RateLimitAdmission(
            self, backend, scopes, reserved, lease_id, reserved_gpu, gpu_cost
        )

    def _gpu_reservation(
        self, scopes: tuple[ScopeLimits, ...], feature: str, reserved_tokens: int
    ) -> tuple[RateLearner | None, float]:
        """What a GPU-seconds-per-minute limit holds back while the request runs: its reserved
        tokens at the feature's learned GPU-seconds per token (nothing until the feature's first
        request has been measured), settled to the real charge at the end. Capped at the
        smallest such limit, so that an over-estimate can delay a request, never refuse it
        outright."""
        limits = [s.gpm for s in scopes if s.gpm]
        if not limits:
            return None, 0.0
        learner = self._gpu_costs.get(feature)
        if learner is None:
            learner = self._gpu_costs[feature] = RateLearner(0.0)
        return learner, min(learner.rate * reserved_tokens, *limits)

    def _degraded(self) -> LocalBackend:
        if self.on_backend_error == "closed":
            raise UpstreamUnavailable(
                "The rate limiter's shared store is unavailable; try again shortly.",
                code="rate_limiter_unavailable",
                headers={"retry-after": str(max(1, round(self.retry_backend_s)))},
            )
        self.fallbacks.inc()
        return self.fallback

    def _backend_failed(self, backend: Backend, exc: BaseException, what: str) -> None:
        self.backend_errors.labels(backend=backend.name).inc()
        now = time.monotonic()
        if now >= self._down_until:  # once per outage window, not once per request
            # The exception type only: Redis errors can quote the URL, which may hold a password.
            log.warning(
                "rate limit %s failed on the %s backend (%s); %s for %.0fs",
                what,
                backend.name,
                type(exc).__name__,
                "falling back to the in-process limiter"
                if self.on_backend_error == "open"
                else "refusing requests",
                self.retry_backend_s,
            )
        self._down_until = now + self.retry_backend_s

    def _refusal(self, d: Decision, reserved: int, headers: dict[str, str]) -> RateLimited:
        # The refused dimension reads 0 left until the retry time; the other keeps what is known.
        wait = d.retry_after_s if d.retry_after_s is not None else PERIOD_S
        if d.dimension == "requests" and d.limit:
            d.requests = Quota(limit=d.limit, remaining=0, reset_s=wait)
        elif d.dimension == "tokens" and d.limit:
            d.tokens = Quota(limit=d.limit, remaining=0, reset_s=wait)
        headers.update(quota_headers(d.requests, d.tokens))
        words = self._index.words.get(d.scope_id or "", "") if self._index else ""
        unit = _UNITS[d.dimension or "requests"]
        limit = f"{d.limit:g}" if d.limit is not None else "?"
        if d.retry_after_s is None:
            message = (
                f"This request reserves {reserved} tokens (prompt + max_tokens), more than the "
                f"limit of {limit} {unit} for {words}: lower max_tokens or shorten the prompt."
            )
            retry = 60.0
        else:
            retry = d.retry_after_s
            message = (
                f"Rate limit reached for {words}: {limit} {unit}. "
                f"Please try again in {retry:.3g}s."
            )
        return RateLimited(message, retry_after_s=retry, headers=dict(headers))

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_task is None or self._heartbeat_task.done():
            self._heartbeat_task = asyncio.create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        while self._live:
            await asyncio.sleep(self.heartbeat_s)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew every live lease in one call (the loop runs this while requests are in flight)."""
        leases = [(s, lease) for lease, ss in self._live.items() for s in ss if s.concurrency]
        try:
            await self.backend.heartbeat(leases)
        except BACKEND_ERRORS as exc:
            self._backend_failed(self.backend, exc, "heartbeat")

    async def aclose(self) -> None:
        """Stop renewing leases and close the shared backend's connections."""
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client = getattr(self.backend, "client", None)
        if client is not None:
            await client.aclose()

    async def serve(self) -> None:
        """A background task for the app's lifespan: idles, and closes the guard when cancelled."""
        await serve_until_cancelled(None, self.aclose)


def build_rate_limit_guard(
    settings: Settings, policy: Callable[[], PolicySnapshot], registry: CollectorRegistry
) -> RateLimitGuard:
    """The guard the settings ask for. Creating the Redis client opens no connection yet."""
    backend: Backend | None = None
    if settings.redis_url:
        # A bounded pool that queues: a burst of admissions must not open a socket each (200
        # concurrent connects time out on a busy host and would flip every one to the fallback).
        # The timeouts include event-loop lag, so they are not tight.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.ratelimit_redis_connections,
            timeout=settings.ratelimit_redis_timeout_s,
            socket_connect_timeout=settings.ratelimit_redis_timeout_s,
            socket_timeout=settings.ratelimit_redis_timeout_s,
        )
        backend = RedisBackend(
            Redis.from_pool(pool), lease_ttl_s=settings.ratelimit_lease_ttl_s
        )
    return RateLimitGuard(
        policy,
        backend,
        registry=registry,
        on_backend_error=settings.ratelimit_on_redis_error,
        heartbeat_s=settings.ratelimit_lease_ttl_s / 3.0,
    )
