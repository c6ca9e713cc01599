"""In-process backend: GCRA buckets in a dict, concurrency as counters.

The default for a single sidecar, and the fallback when Redis is down (`on_redis_error=open`).
Everything runs on the event loop thread between two awaits, so a check-and-apply needs no lock.
Concurrency needs no expiring leases here: the slots live and die with the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.ratelimit.base import EPS_S, PERIOD_S, Decision, Quota, ScopeLimits, quota


def _quota(best: tuple[float, float, float] | None) -> Quota | None:
    return None if best is None else quota(best[1], best[2])


class LocalBackend:
    name = "local"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (scope, dimension) -> (TAT, seconds per unit it was computed with); see `_load`.
        self._tat: dict[tuple[str, str], tuple[float, float]] = {}
        self._slots: dict[str, int] = {}

    async def acquire(
        self,
        scopes: tuple[ScopeLimits, ...],
        reserved_tokens: int,
        lease_id: str,
        reserved_gpu_seconds: float = 0.0,
    ) -> Decision:
        return self.acquire_now(scopes, reserved_tokens, reserved_gpu_seconds)

    def acquire_now(
        self,
        scopes: tuple[ScopeLimits, ...],
        reserved_tokens: int,
        reserved_gpu_seconds: float = 0.0,
    ) -> Decision:
        """The synchronous check (what the benchmark times). Hot path: kept flat on purpose."""
        now = self._clock()
        tat = self._tat
        plan: list[tuple[tuple[str, str], tuple[float, float]]] = []
        # The tightest scope per dimension for the headers: (remaining units, limit, used s).
        best_rq: tuple[float, float, float] | None = None
        best_tok: tuple[float, float, float] | None = None
        for s in scopes:
            for dim, limit, cost in (
                ("requests", s.rpm, 1.0),
                ("tokens", s.tpm, float(reserved_tokens)),
                ("gpu_seconds", s.gpm, reserved_gpu_seconds),
            ):
                if not limit:
                    continue
                key = (s.scope_id, dim)
                per = PERIOD_S / limit
                state = tat.get(key)
                if state is None or state[0] <= now:
                    start = now
                elif state[1] == per:
                    start = state[0]
                else:
                    start = self._load(key, per, now)
                new = start + cost * per
                used = new - now
                if used > PERIOD_S + EPS_S or (cost == 0.0 and start - now >= PERIOD_S):
                    never = cost * per > PERIOD_S + EPS_S
                    return Decision(
                        allowed=False,
                        requests=_quota(best_rq),
                        tokens=_quota(best_tok),
                        scope_id=s.scope_id,
                        dimension=dim,  # type: ignore[arg-type]
                        limit=limit,
                        retry_after_s=None if never else max(used - PERIOD_S, 0.001),
                    )
                plan.append((key, (new, per)))
                if cost and dim != "gpu_seconds":  # OpenAI's headers: requests and tokens
                    left = (PERIOD_S - used) / per
                    if dim == "requests":
                        if best_rq is None or left < best_rq[0]:
                            best_rq = (left, limit, used)
                    elif best_tok is None or left < best_tok[0]:
                        best_tok = (left, limit, used)
            if s.concurrency and self._slots.get(s.scope_id, 0) >= s.concurrency:
                return Decision(
                    allowed=False,
                    requests=_quota(best_rq),
                    tokens=_quota(best_tok),
                    scope_id=s.scope_id,
                    dimension="concurrency",
                    limit=s.concurrency,
                    retry_after_s=1.0,
                )
        # Every check passed: apply them all (a refused request consumed nothing above).
        for key, state in plan:
            tat[key] = state
        for s in scopes:
            if s.concurrency:
                self._slots[s.scope_id] = self._slots.get(s.scope_id, 0) + 1
        return Decision(allowed=True, requests=_quota(best_rq), tokens=_quota(best_tok))

    async def settle(
        self,
        scopes: tuple[ScopeLimits, ...],
        lease_id: str,
        request_delta: int,
        token_delta: int,
        gpu_delta: float,
    ) -> None:
        now = self._clock()
        for s in scopes:
            if s.rpm and request_delta:
                self._move((s.scope_id, "requests"), request_delta, PERIOD_S / s.rpm, now)
            if s.tpm and token_delta:
                self._move((s.scope_id, "tokens"), token_delta, PERIOD_S / s.tpm, now)
            if s.gpm and gpu_delta:
                self._move((s.scope_id, "gpu_seconds"), gpu_delta, PERIOD_S / s.gpm, now)
            if s.concurrency:
                left = self._slots.get(s.scope_id, 0) - 1
                if left > 0:
                    self._slots[s.scope_id] = left
                else:
                    self._slots.pop(s.scope_id, None)

    def _load(self, key: tuple[str, str], per: float, now: float) -> float:
        """The bucket's TAT, never in the past. After a limit change the units in use are kept
        (rescaled to the new time per unit), so raising a limit gives headroom at once."""
        state = self._tat.get(key)
        if state is None or state[0] <= now:
            return now
        tat, old = state
        return tat if old == per else now + (tat - now) * per / old

    def _move(self, key: tuple[str, str], units: float, per: float, now: float) -> None:
        # A refund never takes a bucket below empty: it can't hold more than its limit.
        new = self._load(key, per, now) + units * per
        if new <= now:
            self._tat.pop(key, None)
        else:
            self._tat[key] = (new, per)

    async def heartbeat(self, leases: list[tuple[ScopeLimits, str]]) -> None:
        return None

    def in_use(self, scope_id: str) -> int:
        """Concurrency slots held in `scope_id` (tests, debugging)."""
        return self._slots.get(scope_id, 0)
