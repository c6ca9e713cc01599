"""Alerts: raised by budget checks (budgets/service.py: raise_alerts); listed and acknowledged
here. An alert is active until acknowledged or until its budget period ends."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.alerts.repository import AlertRepository
from control_plane.budgets.service import check_alerts
from control_plane.db import utcnow
from control_plane.errors import NotFound
from control_plane.features.repository import FeatureRepository
from control_plane.models import Alert


async def refresh(session: AsyncSession) -> None:
    """Re-evaluate every budget (catches crossings caused by settlements alone)."""
    await check_alerts(session, await FeatureRepository(session).names())
    await session.commit()


async def acknowledge(session: AsyncSession, alert_id: str) -> Alert:
    alert = await AlertRepository(session).get(alert_id)
    if alert is None:
        raise NotFound("alert", alert_id)
    if alert.acknowledged_at is None:
        alert.acknowledged_at = utcnow()
        await session.commit()
    return alert
