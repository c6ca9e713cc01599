"""Rate limits per key, per feature and per key x feature (issue 6), shared across replicas.

Modules: `base` (GCRA maths, scopes, decisions, OpenAI headers), `local` (in-process backend),
`redis_backend` (Lua scripts in `scripts/`, one round trip per admission), `guard` (the
`sidecar.hooks.Guard`).

Why not the `limits` package (5.8, evaluated first)
----------------------------------------------------
`limits` offers fixed-window, moving-window (a log of hits) and sliding-window-counter
strategies over memory or Redis storage. We would need all of these on top of it, so we use
none of it:

* *All-or-nothing over several limits.* A request is checked against up to three scopes and up
  to four dimensions; `limits` checks one item per call (one Redis round trip each) and a `hit`
  that passes is not undone when a later check fails, so a refused request would consume quota.
* *Reservation and settlement.* `hit(cost=n)` can only add; there is no refund of the unused part
  of `prompt + max_tokens` nor a charge for an underestimate. Its moving window also stores one
  list entry per unit of cost, so a 100k TPM limit keeps up to 100k entries per scope.
* *Concurrency slots.* Not a rate; `limits` has nothing for it. Ours are leases with expiry.
* *Exactness.* The sliding-window counter approximates the previous window linearly; the moving
  window is exact but O(limit) memory. GCRA is exact with one number per bucket and has no
  window edge to burst across.

What is left of it here is the idea (and the habit of atomic Lua scripts); `limits` stays a
dependency only because other components may use it.
"""

from sidecar.ratelimit.base import Decision, Quota, ScopeLimits, format_duration, quota_headers
from sidecar.ratelimit.guard import RateLimitAdmission, RateLimitGuard
from sidecar.ratelimit.local import LocalBackend
from sidecar.ratelimit.redis_backend import RedisBackend

__all__ = [
    "Decision",
    "LocalBackend",
    "Quota",
    "RateLimitAdmission",
    "RateLimitGuard",
    "RedisBackend",
    "ScopeLimits",
    "format_duration",
    "quota_headers",
]
