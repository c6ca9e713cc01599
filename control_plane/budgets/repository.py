"""Budget, lease and settlement queries. Spend is read from the per-minute tables only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import dialect_insert
from control_plane.models import Budget, Lease, Settlement, UsageRollup


class BudgetRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, feature: str, *, for_update: bool = False) -> Budget | None:
        stmt = select(Budget).where(Budget.feature == feature)
        if for_update:
            # PostgreSQL: serialises lease grants per feature. SQLite ignores it; there every
            # transaction already holds the database write lock (BEGIN IMMEDIATE, see db.py).
            stmt = stmt.with_for_update()
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list(self) -> Sequence[Budget]:
        return (await self.session.execute(select(Budget).order_by(Budget.feature))).scalars().all()

    async def for_features(self, features: set[str]) -> Sequence[Budget]:
        stmt = select(Budget).where(Budget.feature.in_(sorted(features))).order_by(Budget.feature)
        return (await self.session.execute(stmt)).scalars().all()

    async def delete(self, budget: Budget) -> None:
        await self.session.delete(budget)

    async def ingested_gpu_seconds(self, feature: str, start: datetime, end: datetime) -> float:
        stmt = select(func.coalesce(func.sum(UsageRollup.gpu_seconds), 0.0)).where(
            UsageRollup.feature == feature, UsageRollup.minute >= start, UsageRollup.minute < end
        )
        return float((await self.session.execute(stmt)).scalar_one())

    async def settled_gpu_seconds(self, feature: str, start: datetime, end: datetime) -> float:
        stmt = select(func.coalesce(func.sum(Settlement.gpu_seconds), 0.0)).where(
            Settlement.feature == feature, Settlement.minute >= start, Settlement.minute < end
        )
        return float((await self.session.execute(stmt)).scalar_one())

    async def add_settlement(self, feature: str, minute: datetime, gpu_seconds: float) -> None:
        stmt = dialect_insert(self.session, Settlement).values(
            feature=feature, minute=minute, gpu_seconds=gpu_seconds
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[Settlement.feature, Settlement.minute],
            set_={"gpu_seconds": Settlement.gpu_seconds + stmt.excluded.gpu_seconds},
        )
        await self.session.execute(stmt)

    async def lease(self, sidecar_id: str, feature: str) -> Lease | None:
        return await self.session.get(Lease, (sidecar_id, feature))

    async def reclaim_expired(self, feature: str, before: datetime) -> None:
        await self.session.execute(
            delete(Lease).where(Lease.feature == feature, Lease.expires_at < before)
        )

    async def outstanding(self, feature: str, *, exclude_sidecar: str | None = None) -> float:
        stmt = select(func.coalesce(func.sum(Lease.granted_gpu_seconds), 0.0)).where(
            Lease.feature == feature
        )
        if exclude_sidecar is not None:
            stmt = stmt.where(Lease.sidecar_id != exclude_sidecar)
        return float((await self.session.execute(stmt)).scalar_one())
