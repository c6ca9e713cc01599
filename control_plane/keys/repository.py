"""API key rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import ApiKey


class KeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key_id: str) -> ApiKey | None:
        return await self.session.get(ApiKey, key_id)

    async def list(
        self, *, limit: int = 100_000, offset: int = 0, include_revoked: bool = True
    ) -> tuple[Sequence[ApiKey], int]:
        stmt = select(ApiKey)
        if not include_revoked:
            stmt = stmt.where(ApiKey.revoked_at.is_(None))
        total = (
            await self.session.execute(select(func.count()).select_from(stmt.subquery()))
        ).scalar_one()
        rows = (
            (
                await self.session.execute(
                    stmt.order_by(ApiKey.created_at).limit(limit).offset(offset)
                )
            )
            .scalars()
            .all()
        )
        return rows, int(total)
