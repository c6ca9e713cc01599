"""/api/v1/alerts"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.alerts import service
from control_plane.alerts.repository import AlertRepository
from control_plane.alerts.schemas import AlertOut
from control_plane.db import utcnow
from control_plane.deps import AdminDep, SessionDep
from control_plane.errors import ERROR_RESPONSES, ErrorBody
from control_plane.pagination import Page, PageDep

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], responses=ERROR_RESPONSES)


@router.get("")
async def list_alerts(
    session: SessionDep,
    _: AdminDep,
    page: PageDep,
    active: Annotated[bool, Query(description="only unacknowledged, current-period alerts")] = True,
    feature: Annotated[str | None, Query()] = None,
) -> Page[AlertOut]:
    """Budget alerts, newest first: `soft_threshold` (soft threshold crossed) and
    `budget_exhausted` (limit reached)."""
    await service.refresh(session)
    rows, total = await AlertRepository(session).list(
        active_at=utcnow() if active else None,
        feature=feature,
        limit=page.limit,
        offset=page.offset,
    )
    return Page[AlertOut](
        items=[AlertOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.post(
    "/{alert_id}/ack", responses={404: {"model": ErrorBody, "description": "Unknown alert"}}
)
async def acknowledge_alert(alert_id: str, session: SessionDep, _: AdminDep) -> AlertOut:
    return AlertOut.model_validate(await service.acknowledge(session, alert_id))
