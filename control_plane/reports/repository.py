"""Rollup aggregation queries for reports (never the raw records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import UsageRollup
from control_plane.usage.repository import ROLLUP_SUMS

_T = UsageRollup.__table__


def _day(session: AsyncSession) -> ColumnElement[str]:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRollup.minute), "YYYY-MM-DD")
    # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff" in UTC (see db.UTCDateTime).
    return func.substr(UsageRollup.minute, 1, 10)


async def grouped(
    session: AsyncSession,
    group_by: str,
    start: datetime | None,
    end: datetime | None,
    feature: str | None,
) -> list[dict[str, Any]]:
    columns: dict[str, ColumnElement[Any]] = {
        "feature": _T.c.feature,
        "model": _T.c.model,
        "key": _T.c.key_id,
        "engine": _T.c.upstream,
        "day": _day(session),
    }
    group = columns[group_by].label("group")
    stmt = select(group, *(func.coalesce(func.sum(_T.c[c]), 0).label(c) for c in ROLLUP_SUMS))
    if start is not None:
        stmt = stmt.where(UsageRollup.minute >= start)
    if end is not None:
        stmt = stmt.where(UsageRollup.minute < end)
    if feature is not None:
        stmt = stmt.where(UsageRollup.feature == feature)
    stmt = stmt.group_by(group).order_by(group)
    return [dict(row._mapping) for row in await session.execute(stmt)]
