"""Rollup aggregation queries for reports (never the raw records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import Feature, LatencyRollup, UsageRollup
from control_plane.usage.repository import ROLLUP_SUMS

_T = UsageRollup.__table__
_L = LatencyRollup.__table__


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


async def latency_buckets(
    session: AsyncSession,
    group_by: str,
    start: datetime | None,
    end: datetime | None,
    feature: str | None,
    model: str | None,
) -> list[dict[str, Any]]:
    """Summed bucket counts per (group, metric, le_ms) over the window."""
    group = (_L.c.feature if group_by == "feature" else _L.c.model).label("group")
    requests = func.sum(_L.c.requests).label("requests")
    stmt = select(group, _L.c.metric, _L.c.le_ms, requests)
    if start is not None:
        stmt = stmt.where(_L.c.minute >= start)
    if end is not None:
        stmt = stmt.where(_L.c.minute < end)
    if feature is not None:
        stmt = stmt.where(_L.c.feature == feature)
    if model is not None:
        stmt = stmt.where(_L.c.model == model)
    stmt = stmt.group_by(group, _L.c.metric, _L.c.le_ms).order_by(group)
    return [dict(row._mapping) for row in await session.execute(stmt)]


async def feature_slos(session: AsyncSession) -> dict[str, tuple[float | None, float | None]]:
    """(slo_ttft_ms, slo_e2e_ms) per feature."""
    stmt = select(Feature.name, Feature.slo_ttft_ms, Feature.slo_e2e_ms)
    return {name: (ttft, e2e) for name, ttft, e2e in await session.execute(stmt)}
