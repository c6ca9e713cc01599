"""Engine rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import Engine


class EngineRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, name: str) -> Engine | None:
        return await self.session.get(Engine, name)

    async def list(self) -> Sequence[Engine]:
        return (await self.session.execute(select(Engine).order_by(Engine.name))).scalars().all()
