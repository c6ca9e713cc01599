"""Usage storage: idempotent record insert and additive per-minute rollup upserts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db import dialect_insert
from control_plane.models import LatencyRollup, UsageRecordRow, UsageRollup
from control_plane.usage.latency import LATENCY_KEY

_RECORDS = UsageRecordRow.__table__
_ROLLUPS = UsageRollup.__table__
_LATENCY = LatencyRollup.__table__
ROLLUP_KEY = ("minute", "feature", "model", "key_id", "upstream")
ROLLUP_SUMS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "gpu_seconds",
    "cost_usd",
    "cloud_cost_usd",
    "opening_requests",
    "new_openings",
    "wasted_prefill_gpu_seconds",
)


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_new(self, rows: list[dict[str, Any]]) -> set[str]:
        """INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id: the ids that were new."""
        if not rows:
            return set()
        stmt = (
            dialect_insert(self.session, _RECORDS)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(_RECORDS.c.id)
        )
        result = await self.session.execute(stmt, rows)
        return set(result.scalars().all())

    async def add_to_rollups(self, deltas: list[dict[str, Any]]) -> None:
        """Upsert adding each delta to its minute row. Callers pass deltas sorted by key so that
        concurrent batches on PostgreSQL take row locks in one order (no deadlocks)."""
        if not deltas:
            return
        stmt = dialect_insert(self.session, _ROLLUPS)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(ROLLUP_KEY),
            set_={c: _ROLLUPS.c[c] + stmt.excluded[c] for c in ROLLUP_SUMS},
        )
        await self.session.execute(stmt, deltas)

    async def add_to_latency(self, deltas: list[dict[str, Any]]) -> None:
        """Upsert adding bucket counts (see usage/latency.py); sorted like add_to_rollups."""
        if not deltas:
            return
        stmt = dialect_insert(self.session, _LATENCY)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(LATENCY_KEY),
            set_={"requests": _LATENCY.c.requests + stmt.excluded.requests},
        )
        await self.session.execute(stmt, deltas)

    def _record_filters(
        self,
        start: datetime | None,
        end: datetime | None,
        feature: str | None,
        model: str | None,
        key_id: str | None,
    ) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if start is not None:
            conds.append(UsageRecordRow.started_at >= start)
        if end is not None:
            conds.append(UsageRecordRow.started_at < end)
        if feature is not None:
            conds.append(UsageRecordRow.feature == feature)
        if model is not None:
            conds.append(UsageRecordRow.model == model)
        if key_id is not None:
            conds.append(UsageRecordRow.key_id == key_id)
        return conds

    async def records(
        self,
        *,
        start: datetime | None,
        end: datetime | None,
        feature: str | None,
        model: str | None,
        key_id: str | None,
        limit: int,
        offset: int,
    ) -> tuple[Sequence[UsageRecordRow], int]:
        conds = self._record_filters(start, end, feature, model, key_id)
        total = (
            await self.session.execute(
                select(func.count()).select_from(UsageRecordRow).where(*conds)
            )
        ).scalar_one()
        rows = (
            (
                await self.session.execute(
                    select(UsageRecordRow)
                    .where(*conds)
                    .order_by(UsageRecordRow.started_at.desc(), UsageRecordRow.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
            )
            .scalars()
            .all()
        )
        return rows, int(total)

    async def rollup_totals(
        self, *, start: datetime | None, end: datetime | None, feature: str | None
    ) -> dict[str, Any]:
        stmt = select(*(func.coalesce(func.sum(_ROLLUPS.c[c]), 0).label(c) for c in ROLLUP_SUMS))
        if start is not None:
            stmt = stmt.where(UsageRollup.minute >= start)
        if end is not None:
            stmt = stmt.where(UsageRollup.minute < end)
        if feature is not None:
            stmt = stmt.where(UsageRollup.feature == feature)
        return dict((await self.session.execute(stmt)).one()._mapping)
