"""The policy revision counter (one row, seeded by the first migration)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import PolicyState


async def bump_revision(session: AsyncSession) -> None:
    """Call in the same transaction as the admin change, so a snapshot never shows a new
    revision with old content."""
    await session.execute(
        update(PolicyState).where(PolicyState.id == 1).values(revision=PolicyState.revision + 1)
    )


async def current_revision(session: AsyncSession) -> int:
    value = (
        await session.execute(select(PolicyState.revision).where(PolicyState.id == 1))
    ).scalar()
    return int(value or 0)
