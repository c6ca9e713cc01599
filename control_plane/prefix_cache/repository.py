"""Prompt-opening counts per feature, from the raw usage records.

The other reports read the per-minute rollups; this one needs the distinct openings, which a
rollup cannot sum. The window is bounded by the route (at most `MAX_WINDOW`) and the query runs
on `ix_usage_records_feature_started_at`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.models import UsageRecordRow

_R = UsageRecordRow.__table__


async def openings_by_feature(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    block_tokens: int,
    feature: str | None,
) -> list[dict[str, Any]]:
    """Per feature: requests with a known opening, distinct openings, requests whose opening was
    seen only once in the window, the whole-block prompt tokens of those one-off requests, token
    sums and the feature's cost per GPU-second."""
    # The prompt's whole KV blocks (`//` is integer division on SQLite and PostgreSQL alike).
    whole_blocks = (_R.c.input_tokens // block_tokens) * block_tokens
    where = [_R.c.started_at >= start, _R.c.started_at < end, _R.c.prompt_opening.is_not(None)]
    if feature is not None:
        where.append(_R.c.feature == feature)
    per_opening = (
        select(
            _R.c.feature,
            func.count().label("n"),
            func.sum(whole_blocks).label("cacheable"),
            func.sum(_R.c.input_tokens).label("input_tokens"),
            func.sum(_R.c.cached_input_tokens).label("cached_input_tokens"),
            func.sum(_R.c.gpu_seconds).label("gpu_seconds"),
            func.sum(_R.c.cost_usd).label("cost_usd"),
        )
        .where(*where)
        .group_by(_R.c.feature, _R.c.prompt_opening)
        .subquery()
    )
    one_off = per_opening.c.n == 1
    stmt = (
        select(
            per_opening.c.feature,
            func.sum(per_opening.c.n).label("requests"),
            func.count().label("distinct_openings"),
            func.sum(case((one_off, 1), else_=0)).label("one_off_requests"),
            func.sum(case((one_off, per_opening.c.cacheable), else_=0)).label("one_off_tokens"),
            func.sum(per_opening.c.input_tokens).label("input_tokens"),
            func.sum(per_opening.c.cached_input_tokens).label("cached_input_tokens"),
            func.sum(per_opening.c.gpu_seconds).label("gpu_seconds"),
            func.sum(per_opening.c.cost_usd).label("cost_usd"),
        )
        .group_by(per_opening.c.feature)
        .order_by(per_opening.c.feature)
    )
    return [dict(row._mapping) for row in await session.execute(stmt)]
