"""Budget state: how much of the current period is used, outstanding in leases, and left.

`used` = max(settled, ingested) over the period, both read from per-minute tables:
- settled: GPU-seconds sidecars reported as charged when renewing a lease (timely);
- ingested: the rollups of shipped usage records (authoritative, but lags by the shipping delay).
They measure the same spend through two channels, so adding them would double count; the max
never under-counts either channel. Charges not yet settled are covered by the sidecar's
outstanding lease, which is subtracted from what remains (see leases.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.alerts.repository import AlertRepository
from control_plane.budgets.periods import period_bounds
from control_plane.budgets.repository import BudgetRepository
from control_plane.budgets.schemas import BudgetIn, BudgetOut
from control_plane.db import utcnow
from control_plane.errors import NotFound
from control_plane.features.repository import FeatureRepository
from control_plane.models import Budget
from control_plane.policy.repository import bump_revision
from gpuledger.contracts import BudgetState


@dataclass(frozen=True)
class BudgetView:
    budget: Budget
    start: datetime
    end: datetime
    used: float
    outstanding: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget.limit_gpu_seconds - self.used - self.outstanding)

    @property
    def status(self) -> str:
        if self.used >= self.budget.limit_gpu_seconds:
            return "exhausted"
        if self.used >= self.budget.limit_gpu_seconds * self.budget.soft_threshold_pct / 100:
            return "soft_threshold"
        return "ok"

    def to_state(self) -> BudgetState:
        return BudgetState(
            feature=self.budget.feature,
            period=self.budget.period,
            period_start=self.start,
            period_end=self.end,
            limit_gpu_seconds=self.budget.limit_gpu_seconds,
            used_gpu_seconds=self.used,
            soft_threshold_pct=self.budget.soft_threshold_pct,
            hard_action=self.budget.hard_action,
        )

    def to_out(self) -> BudgetOut:
        b = self.budget
        return BudgetOut(
            feature=b.feature,
            period=b.period,
            rolling_hours=b.rolling_hours,
            limit_gpu_seconds=b.limit_gpu_seconds,
            limit_gpu_hours=b.limit_gpu_seconds / 3600,
            soft_threshold_pct=b.soft_threshold_pct,
            hard_action=b.hard_action,
            period_start=self.start,
            period_end=self.end,
            used_gpu_seconds=self.used,
            outstanding_lease_gpu_seconds=self.outstanding,
            remaining_gpu_seconds=self.remaining,
            used_ratio=self.used / b.limit_gpu_seconds if b.limit_gpu_seconds else 0.0,
            status=self.status,
        )


async def view(
    session: AsyncSession, budget: Budget, now: datetime, *, exclude_sidecar: str | None = None
) -> BudgetView:
    repo = BudgetRepository(session)
    start, end = period_bounds(budget.period, now, budget.rolling_hours)
    settled = await repo.settled_gpu_seconds(budget.feature, start, end)
    ingested = await repo.ingested_gpu_seconds(budget.feature, start, end)
    outstanding = await repo.outstanding(budget.feature, exclude_sidecar=exclude_sidecar)
    return BudgetView(budget, start, end, max(settled, ingested), outstanding)


async def raise_alerts(session: AsyncSession, v: BudgetView) -> None:
    """Record soft-threshold and exhaustion crossings, once per feature, kind and period."""
    b = v.budget
    alerts = AlertRepository(session)
    pct = 100 * v.used / b.limit_gpu_seconds
    if v.status in ("soft_threshold", "exhausted"):
        await alerts.raise_once(
            feature=b.feature,
            kind="soft_threshold",
            period_start=v.start,
            period_end=v.end,
            used=v.used,
            limit=b.limit_gpu_seconds,
            message=f"feature {b.feature} used {pct:.1f}% of its {b.period} GPU budget "
            f"(soft threshold {b.soft_threshold_pct:g}%)",
        )
    if v.status == "exhausted":
        await alerts.raise_once(
            feature=b.feature,
            kind="budget_exhausted",
            period_start=v.start,
            period_end=v.end,
            used=v.used,
            limit=b.limit_gpu_seconds,
            message=f"feature {b.feature} spent its {b.period} GPU budget; "
            f"hard action {b.hard_action} until {v.end.isoformat()}",
        )


async def check_alerts(session: AsyncSession, features: set[str]) -> None:
    if not features:
        return
    now = utcnow()
    for budget in await BudgetRepository(session).for_features(features):
        await raise_alerts(session, await view(session, budget, now))


async def list_views(session: AsyncSession) -> list[BudgetView]:
    now = utcnow()
    return [await view(session, b, now) for b in await BudgetRepository(session).list()]


async def get_view(session: AsyncSession, feature: str) -> BudgetView:
    budget = await BudgetRepository(session).get(feature)
    if budget is None:
        raise NotFound("budget", feature)
    return await view(session, budget, utcnow())


async def set_budget(session: AsyncSession, feature: str, body: BudgetIn) -> BudgetView:
    if await FeatureRepository(session).get(feature) is None:
        raise NotFound("feature", feature)
    repo = BudgetRepository(session)
    budget = await repo.get(feature, for_update=True)
    if budget is None:
        budget = Budget(feature=feature)
        session.add(budget)
    budget.period = body.period
    budget.rolling_hours = body.rolling_hours
    budget.limit_gpu_seconds = body.gpu_hours * 3600
    budget.soft_threshold_pct = body.soft_threshold_pct
    budget.hard_action = body.hard_action
    budget.updated_at = utcnow()
    await bump_revision(session)
    await session.flush()
    v = await view(session, budget, utcnow())
    await session.commit()
    return v


async def delete_budget(session: AsyncSession, feature: str) -> None:
    repo = BudgetRepository(session)
    budget = await repo.get(feature, for_update=True)
    if budget is None:
        raise NotFound("budget", feature)
    await repo.delete(budget)
    await bump_revision(session)
    await session.commit()


def all_states(views: Sequence[BudgetView]) -> list[BudgetState]:
    return [v.to_state() for v in views]
