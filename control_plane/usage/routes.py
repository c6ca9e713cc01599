"""Usage: ingestion (sidecar credentials) and queries (admin credentials)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from control_plane.deps import AdminDep, MetricsDep, ReadSessionDep, SessionDep, SidecarDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.pagination import Page, PageDep, TimeRangeDep
from control_plane.usage import service
from control_plane.usage.repository import UsageRepository
from control_plane.usage.schemas import UsageRecordOut, UsageSummary, UsageTotals
from gpuledger.contracts import UsageBatch, UsageBatchAck

router = APIRouter(prefix="/api/v1/usage", tags=["usage"], responses=ERROR_RESPONSES)


_BATCH_EXAMPLE = {
    "records": [
        {
            "id": "019abc2e-7d4f-7c1a-9b3e-5f0d2a8c4e11",
            "key_id": "key_019abc2e7d4f7c1a",
            "feature": "support-bot",
            "model": "llama-3.1-8b",
            "upstream": "h100-a",
            "sidecar_id": "sidecar-1",
            "started_at": "2026-11-27T21:05:33Z",
            "ttft_ms": 84.0,
            "e2e_ms": 1210.0,
            "input_tokens": 512,
            "cached_input_tokens": 384,
            "output_tokens": 180,
            "finish_reason": "stop",
            "status": "ok",
            "gpu_seconds": 0.42,
            "cost_usd": 0.00029,
            "cloud_cost_usd": 0.00018,
        }
    ]
}


@router.post("/batch")
async def ingest_batch(
    batch: Annotated[UsageBatch, Body(openapi_examples={"one record": {"value": _BATCH_EXAMPLE}})],
    session: SessionDep,
    metrics: MetricsDep,
    _: SidecarDep,
) -> UsageBatchAck:
    """Store up to 10,000 usage records. Idempotent by record id: a replayed record is
    acknowledged as a duplicate and never counted twice (in records or rollups)."""
    return await service.ingest(session, batch, metrics)


@router.get("/records")
async def list_records(
    session: ReadSessionDep,
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
    session: ReadSessionDep,
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
