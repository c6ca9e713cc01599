"""Rate-limit rows."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import RateLimitRule


class RateLimitRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, rule_id: str) -> RateLimitRule | None:
        return await self.session.get(RateLimitRule, rule_id)

    async def list(self) -> Sequence[RateLimitRule]:
        stmt = select(RateLimitRule).order_by(RateLimitRule.created_at)
        return (await self.session.execute(stmt)).scalars().all()

    async def find_scope(
        self, scope: str, key_id: str | None, feature: str | None
    ) -> RateLimitRule | None:
        stmt = select(RateLimitRule).where(
            RateLimitRule.scope == scope,
            RateLimitRule.key_id.is_(None) if key_id is None else RateLimitRule.key_id == key_id,
            RateLimitRule.feature.is_(None)
            if feature is None
            else RateLimitRule.feature == feature,
        )
        return (await self.session.execute(stmt)).scalars().first()
