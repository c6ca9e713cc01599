"""Redis backend: the buckets and concurrency leases shared by every sidecar replica.

One admission is one `EVALSHA` of `scripts/acquire.lua` (one round trip) covering every scope,
all-or-nothing, so parallel requests on several replicas can't overshoot and a refused request
consumes nothing. Settlement is one more call after the response, off the admission path.

Time comes from Redis (`TIME` inside the scripts) so replicas with skewed clocks agree; tests pass
an injected clock instead. Concurrency slots are leases in a ZSET scored by expiry: the guard
renews its live ones in one call per heartbeat, and a crashed sidecar's leases lapse after
`lease_ttl_s`, when the next admission sweeps them.

All keys of one script call must live on one Redis Cluster slot: the default prefix carries a hash
tag (`{gpuledger-rl}`). That puts all rate-limit state on one shard, which is fine at the request
rates one GPU fleet sees.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from sidecar.ratelimit.base import (
    DIMENSIONS,
    Decision,
    Quota,
    ScopeLimits,
    quota,
    tighter,
)

DEFAULT_PREFIX = "{gpuledger-rl}:"


def _script(name: str) -> str:
    return resources.files("sidecar.ratelimit").joinpath("scripts", name).read_text()


def _limit(value: float | None) -> str:
    return repr(float(value)) if value else "0"


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease_ttl_s: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (seconds) replaces Redis `TIME` (tests); the scripts are read here, not at import."""
        self.client = client
        self.prefix = prefix
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._acquire: AsyncScript = client.register_script(_script("acquire.lua"))
        self._settle: AsyncScript = client.register_script(_script("settle.lua"))
        self._heartbeat: AsyncScript = client.register_script(_script("heartbeat.lua"))

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock() * 1000.0)

    def key(self, scope_id: str, dimension: str) -> str:
        return f"{self.prefix}{scope_id}:{dimension}"

    async def acquire(
        self,
        scopes: tuple[ScopeLimits, ...],
        reserved_tokens: int,
        lease_id: str,
        reserved_gpu_seconds: float = 0.0,
    ) -> Decision:
        keys: list[str] = []
        args: list[Any] = [
            self._now(),
            lease_id,
            self.lease_ttl_s * 1000.0,
            reserved_tokens,
            repr(float(reserved_gpu_seconds)),
        ]
        for s in scopes:
            keys.extend(self.key(s.scope_id, d) for d in DIMENSIONS)
            args.extend((_limit(s.rpm), _limit(s.tpm), _limit(s.gpm), _limit(s.concurrency)))
        reply: list[Any] = await self._acquire(keys=keys, args=args)
        if int(reply[0]) == 0:
            scope = scopes[int(reply[1])]
            dim = DIMENSIONS[int(reply[2]) - 1]
            retry_ms = float(reply[3])
            limit = {
                "requests": scope.rpm,
                "tokens": scope.tpm,
                "gpu_seconds": scope.gpm,
                "concurrency": scope.concurrency,
            }[dim]
            return Decision(
                allowed=False,
                scope_id=scope.scope_id,
                dimension=dim,
                limit=limit,
                retry_after_s=None if retry_ms < 0 else retry_ms / 1000.0,
            )
        requests: Quota | None = None
        tokens: Quota | None = None
        for i, s in enumerate(scopes):
            rq, tok = reply[1 + 2 * i], reply[2 + 2 * i]
            if s.rpm and rq:
                requests = tighter(requests, quota(s.rpm, float(rq) / 1000.0))
            if s.tpm and tok:
                tokens = tighter(tokens, quota(s.tpm, float(tok) / 1000.0))
        return Decision(allowed=True, requests=requests, tokens=tokens)

    async def settle(
        self,
        scopes: tuple[ScopeLimits, ...],
        lease_id: str,
        request_delta: int,
        token_delta: int,
        gpu_delta: float,
    ) -> None:
        keys: list[str] = []
        args: list[Any] = [
            self._now(),
            lease_id,
            request_delta,
            token_delta,
            repr(float(gpu_delta)),
        ]
        for s in scopes:
            keys.extend(self.key(s.scope_id, d) for d in DIMENSIONS)
            args.extend((_limit(s.rpm), _limit(s.tpm), _limit(s.gpm), _limit(s.concurrency)))
        await self._settle(keys=keys, args=args)

    async def heartbeat(self, leases: list[tuple[ScopeLimits, str]]) -> None:
        if not leases:
            return
        keys = [self.key(s.scope_id, "concurrency") for s, _ in leases]
        args: list[Any] = [self._now(), self.lease_ttl_s * 1000.0]
        args.extend(lease_id for _, lease_id in leases)
        await self._heartbeat(keys=keys, args=args)

    async def leases_in_use(self, scope_id: str) -> int:
        """Unexpired leases in `scope_id` (tests, debugging)."""
        key = self.key(scope_id, "concurrency")
        now = self._clock() * 1000.0 if self._clock else await self._redis_now_ms()
        count: int = await self.client.zcount(key, f"({now}", "+inf")
        return count

    async def _redis_now_ms(self) -> float:
        sec, usec = await self.client.time()
        return sec * 1000.0 + usec / 1000.0

