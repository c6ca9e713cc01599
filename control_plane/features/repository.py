"""Feature rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import Feature


class FeatureRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str) -> Feature | None:
        return await self.session.get(Feature, name)

    async def list(self, limit: int = 10_000, offset: int = 0) -> tuple[Sequence[Feature], int]:
        total = (await self.session.execute(select(func.count()).select_from(Feature))).scalar_one()
        rows = (
            (
                await self.session.execute(
                    select(Feature).order_by(Feature.name).limit(limit).offset(offset)
                )
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    async def names(self) -> set[str]:
        return set((await self.session.execute(select(Feature.name))).scalars().all())
