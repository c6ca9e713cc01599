"""Usage: ingestion (sidecar credentials) and queries (admin credentials)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.deps import AdminDep, MetricsDep, SessionDep, SidecarDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.pagination import Page, PageDep, TimeRangeDep
from control_plane.usage import service
from control_plane.usage.repository import UsageRepository
from control_plane.usage.schemas import UsageRecordOut, UsageSummary, UsageTotals
from gpuledger.contracts import UsageBatch, UsageBatchAck

router = APIRouter(prefix="/api/v1/usage", tags=["usage"], responses=ERROR_RESPONSES)


@router.post("/batch")
async def ingest_batch(
    batch: UsageBatch, session: SessionDep, metrics: MetricsDep, _: SidecarDep
) -> UsageBatchAck:
    """Store up to 10,000 usage records. Idempotent by record id: a replayed record is
    acknowledged as a duplicate and never counted twice (in records or rollups)."""
    return await service.ingest(session, batch, metrics)


@router.get("/records")
async def list_records(
    session: SessionDep,
    _: AdminDep,
    page: PageDep,
    window: TimeRangeDep,
    feature: Annotated[str | None, Query()] = None,
    model: Annotated[str | None, Query()] = None,
    key_id: Annotated[str | None, Query()] = None,
) -> Page[UsageRecordOut]:
    """Raw records, newest first (filters on `started_at`)."""
    rows, total = await UsageRepository(session).records(
        start=window.start,
        end=window.end,
        feature=feature,
        model=model,
        key_id=key_id,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[UsageRecordOut](
        items=[UsageRecordOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/summary")
async def summary(
    session: SessionDep,
    _: AdminDep,
    window: TimeRangeDep,
    feature: Annotated[str | None, Query()] = None,
) -> UsageSummary:
    """Totals over the window, from the per-minute rollups (minute resolution)."""
    totals = await UsageRepository(session).rollup_totals(
        start=window.start, end=window.end, feature=feature
    )
    return UsageSummary(
        start=window.start, end=window.end, feature=feature, totals=UsageTotals(**totals)
    )
