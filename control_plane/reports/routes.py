"""/api/v1/reports"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.deps import AdminDep, ReadSessionDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.pagination import TimeRangeDep
from control_plane.reports import service
from control_plane.reports.schemas import (
    CostGroup,
    CostReport,
    LatencyGroup,
    LatencyReport,
    UtilizationReport,
)

router = APIRouter(prefix="/api/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)


@router.get("/cost")
async def cost(
    session: ReadSessionDep,
    _: AdminDep,
    window: TimeRangeDep,
    group_by: Annotated[CostGroup, Query()] = "feature",
    feature: Annotated[str | None, Query(description="restrict to one feature")] = None,
) -> CostReport:
    """Self-hosted cost against the cloud-equivalent, grouped by feature, model, key, engine or
    UTC day (from the per-minute rollups)."""
    return await service.cost_report(session, group_by, window.start, window.end, feature)


@router.get("/utilization")
async def utilization(
    session: ReadSessionDep, _: AdminDep, window: TimeRangeDep
) -> UtilizationReport:
    """Busy (attributed) vs idle GPU-seconds per engine and the break-even utilization against
    the cloud-equivalent price; the window defaults to the last 24 hours."""
    return await service.utilization_report(session, window.start, window.end)


@router.get("/latency")
async def latency(
    session: ReadSessionDep,
    _: AdminDep,
    window: TimeRangeDep,
    group_by: Annotated[LatencyGroup, Query()] = "feature",
    feature: Annotated[str | None, Query(description="restrict to one feature")] = None,
    model: Annotated[str | None, Query(description="restrict to one model")] = None,
) -> LatencyReport:
    """P50/P95/P99 of TTFT, inter-token latency and e2e per feature or model, from the
    per-minute latency histograms of successful requests (accurate to one bucket; the bounds are
    in `bucket_bounds_ms`), with the feature's SLOs and the share of requests over them. Usage
    ingested before the histograms existed (migration 0003) is not in this report."""
    return await service.latency_report(session, group_by, window.start, window.end, feature, model)
