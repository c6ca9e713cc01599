"""/api/v1/budgets (admin) and /api/v1/sidecar/leases (sidecar)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, status

from control_plane.budgets import service
from control_plane.budgets.leases import grant_lease
from control_plane.budgets.schemas import BudgetIn, BudgetOut
from control_plane.deps import (
    AdminDep,
    MetricsDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    SidecarDep,
)
from control_plane.errors import ERROR_RESPONSES, ErrorBody
from gpuledger.contracts import LeaseGrant, LeaseRequest

router = APIRouter(prefix="/api/v1/budgets", tags=["budgets"], responses=ERROR_RESPONSES)
sidecar_router = APIRouter(prefix="/api/v1/sidecar", tags=["sidecar"], responses=ERROR_RESPONSES)
_LEASE_EXAMPLES: dict[str, Any] = {
    "renew": {
        "summary": "settle 12.5 GPU-s and ask for in-flight reservations plus headroom",
        "value": {
            "sidecar_id": "sidecar-1",
            "feature": "support-bot",
            "requested_gpu_seconds": 60,
            "settled_gpu_seconds": 12.5,
        },
    },
    "release": {
        "summary": "shutting down: settle and give the lease back",
        "value": {
            "sidecar_id": "sidecar-1",
            "feature": "support-bot",
            "requested_gpu_seconds": 0,
            "settled_gpu_seconds": 3.0,
        },
    },
}
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown feature or no budget"}
}


@router.get("")
async def list_budgets(session: ReadSessionDep, _: AdminDep) -> list[BudgetOut]:
    """Every budget with its current period, spend and what remains."""
    return [v.to_out() for v in await service.list_views(session)]


@router.get("/{feature}", responses=_404)
async def get_budget(feature: str, session: ReadSessionDep, _: AdminDep) -> BudgetOut:
    return (await service.get_view(session, feature)).to_out()


@router.put("/{feature}", responses=_404)
async def set_budget(feature: str, body: BudgetIn, session: SessionDep, _: AdminDep) -> BudgetOut:
    """Create or replace the feature's budget (limit in GPU-hours per period)."""
    return (await service.set_budget(session, feature, body)).to_out()


@router.delete("/{feature}", status_code=status.HTTP_204_NO_CONTENT, responses=_404)
async def delete_budget(feature: str, session: SessionDep, _: AdminDep) -> None:
    await service.delete_budget(session, feature)


@sidecar_router.post(
    "/leases", responses={404: {"model": ErrorBody, "description": "Unknown feature"}}
)
async def lease(
    body: Annotated[LeaseRequest, Body(openapi_examples=_LEASE_EXAMPLES)],
    session: SessionDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    _: SidecarDep,
) -> LeaseGrant:
    """Settle the previous lease and get a new one: a slice of the feature's remaining
    GPU-seconds, replacing the caller's previous grant. `exhausted` means the period's budget is
    spent: the sidecar applies `hard_action` until `period_end`. A zero grant without
    `exhausted` means the rest is leased to other sidecars for now: ask again shortly.
    A feature without a budget gets an effectively unlimited grant (1e12 GPU-seconds)."""
    return await grant_lease(session, settings, body, metrics)
