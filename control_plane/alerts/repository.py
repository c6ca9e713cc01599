"""Alert rows: at most one per (feature, kind, period start), thanks to a unique index."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import uuid_utils
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import dialect_insert, utcnow
from control_plane.models import Alert


class AlertRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def raise_once(
        self,
        *,
        feature: str,
        kind: str,
        period_start: datetime,
        period_end: datetime,
        used: float,
        limit: float,
        message: str,
    ) -> None:
        stmt = dialect_insert(self.session, Alert).values(
            id=f"alt_{uuid_utils.uuid7().hex}",
            feature=feature,
            kind=kind,
            period_start=period_start,
            period_end=period_end,
            used_gpu_seconds=used,
            limit_gpu_seconds=limit,
            message=message,
            created_at=utcnow(),
        )
        await self.session.execute(
            stmt.on_conflict_do_nothing(index_elements=["feature", "kind", "period_start"])
        )

    async def list(
        self, *, active_at: datetime | None, feature: str | None, limit: int, offset: int
    ) -> tuple[Sequence[Alert], int]:
        stmt = select(Alert)
        if active_at is not None:
            stmt = stmt.where(Alert.period_end > active_at, Alert.acknowledged_at.is_(None))
        if feature is not None:
            stmt = stmt.where(Alert.feature == feature)
        total = (
            await self.session.execute(select(func.count()).select_from(stmt.subquery()))
        ).scalar_one()
        rows = (
            (
                await self.session.execute(
                    stmt.order_by(Alert.created_at.desc()).limit(limit).offset(offset)
                )
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    async def get(self, alert_id: str) -> Alert | None:
        return await self.session.get(Alert, alert_id)
