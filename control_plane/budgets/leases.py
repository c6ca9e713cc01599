"""Budget leases: each sidecar holds a slice of a feature's remaining GPU-seconds.

One call does, in one transaction, under the budget's lock (`SELECT ... FOR UPDATE` on
PostgreSQL; SQLite transactions hold the write lock from their first statement):

1. record `settled_gpu_seconds` (what the sidecar charged since its last call) as a settlement;
2. reclaim leases that expired more than `lease_reclaim_grace_seconds` ago (dead sidecars);
3. drop the caller's previous lease: the new grant *replaces* it (it is not added to it);
4. remaining = limit - used - outstanding leases of the other sidecars;
5. grant max(floor, min(want, share cap, remaining)), where want = clamp(max(min_lease,
   burn x ttl x headroom, requested), max_lease), share cap = max(min_lease, remaining x
   max_share), and floor = min(old grant - settled, requested): a renewal never takes back what
   the sidecar may have reserved from its old lease (old grant - settled was already counted as
   outstanding, so keeping it does not break the invariant below). Requesting 0 releases.

Invariant: granted leases never sum to more than `limit - used`. So if each sidecar admits a
request only while its current lease covers the request's reservation, total charge stays within
the limit plus at most one request's under-estimate per sidecar. Conservative by design: settled
charges that straddle a period reset count against the new period; a lease granted just before a
reset stays outstanding after it; a repeated call (lost response) settles twice.

A sidecar's reservations still in flight at renewal are carried over: it must deduct them from
the new grant (so it should ask for them on top of its headroom), and settle them later.
`exhausted` means the period's budget is spent (used >= limit); a zero grant without it means the
rest is leased to other sidecars for now.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.budgets.periods import floor_minute
from control_plane.budgets.repository import BudgetRepository
from control_plane.budgets.service import raise_alerts, view
from control_plane.db import utcnow
from control_plane.errors import NotFound
from control_plane.features.repository import FeatureRepository
from control_plane.metrics import ControlPlaneMetrics
from control_plane.models import Lease
from control_plane.settings import Settings
from gpuledger.contracts import LeaseGrant, LeaseRequest

# A feature without a budget is not metered by leases; the grant is effectively unlimited.
UNBUDGETED_GRANT_GPU_SECONDS = 1e12
_EPSILON = 1e-9


async def grant_lease(
    session: AsyncSession, settings: Settings, req: LeaseRequest, metrics: ControlPlaneMetrics
) -> LeaseGrant:
    now = utcnow()
    ttl = timedelta(seconds=settings.lease_ttl_seconds)
    if await FeatureRepository(session).get(req.feature) is None:
        raise NotFound("feature", req.feature)
    repo = BudgetRepository(session)
    budget = await repo.get(req.feature, for_update=True)
    if budget is None:
        await session.rollback()
        return LeaseGrant(
            feature=req.feature,
            granted_gpu_seconds=UNBUDGETED_GRANT_GPU_SECONDS,
            expires_at=now + ttl,
            period_end=now + timedelta(days=365),
        )

    if req.settled_gpu_seconds > 0:
        await repo.add_settlement(req.feature, floor_minute(now), req.settled_gpu_seconds)
    await repo.reclaim_expired(
        req.feature, now - timedelta(seconds=settings.lease_reclaim_grace_seconds)
    )
    lease = await repo.lease(req.sidecar_id, req.feature)
    burn = 0.0
    # What the sidecar may already have committed from its old lease (reservations in flight)
    # must stay covered: never shrink its grant below min(old balance, what it asks for).
    floor = 0.0
    if lease is not None:
        floor = min(
            max(0.0, lease.granted_gpu_seconds - req.settled_gpu_seconds), req.requested_gpu_seconds
        )
        elapsed = max((now - lease.granted_at).total_seconds(), 1e-3)
        instant = req.settled_gpu_seconds / elapsed
        burn = instant if lease.burn_rate == 0 else 0.5 * lease.burn_rate + 0.5 * instant
    await session.flush()

    v = await view(session, budget, now, exclude_sidecar=req.sidecar_id)
    remaining = v.remaining
    want = max(
        settings.lease_min_gpu_seconds,
        burn * settings.lease_ttl_seconds * settings.lease_burn_headroom,
        req.requested_gpu_seconds,
    )
    want = min(want, settings.lease_max_gpu_seconds)
    share_cap = max(settings.lease_min_gpu_seconds, remaining * settings.lease_max_share)
    granted = max(floor, min(want, share_cap, remaining))
    if req.requested_gpu_seconds <= 0:
        granted = 0.0  # a release (sidecar shutting down): give it all back
    if granted <= _EPSILON:
        granted = 0.0
    # Exhausted means spent: only the period's end (or a higher limit) changes it. Nothing left
    # to grant while other sidecars hold leases is a zero grant instead; those come back when
    # they settle or expire, so the sidecar should ask again soon.
    exhausted = v.used >= budget.limit_gpu_seconds - _EPSILON

    if lease is None:
        lease = Lease(sidecar_id=req.sidecar_id, feature=req.feature)
        session.add(lease)
    lease.granted_gpu_seconds = granted
    lease.granted_at = now
    lease.expires_at = now + ttl
    lease.burn_rate = burn
    await raise_alerts(session, v)
    await session.commit()

    metrics.leases_granted.labels(req.feature).inc(granted)
    return LeaseGrant(
        feature=req.feature,
        granted_gpu_seconds=granted,
        expires_at=now + ttl,
        period_end=v.end,
        exhausted=exhausted,
        hard_action=budget.hard_action,
    )
