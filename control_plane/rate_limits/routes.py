"""/api/v1/rate-limits"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from control_plane.deps import AdminDep, ReadSessionDep, SessionDep
from control_plane.errors import ERROR_RESPONSES, ErrorBody
from control_plane.rate_limits import service
from control_plane.rate_limits.repository import RateLimitRepository
from control_plane.rate_limits.schemas import RateLimitIn, RateLimitOut

router = APIRouter(prefix="/api/v1/rate-limits", tags=["rate-limits"], responses=ERROR_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown rule, key or feature"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={**_404, 409: {"model": ErrorBody, "description": "Scope already has a rule"}},
)
async def create_rate_limit(body: RateLimitIn, session: SessionDep, _: AdminDep) -> RateLimitOut:
    return RateLimitOut.model_validate(await service.create(session, body))


@router.get("")
async def list_rate_limits(session: ReadSessionDep, _: AdminDep) -> list[RateLimitOut]:
    return [RateLimitOut.model_validate(r) for r in await RateLimitRepository(session).list()]


@router.put("/{rule_id}", responses=_404)
async def replace_rate_limit(
    rule_id: str, body: RateLimitIn, session: SessionDep, _: AdminDep
) -> RateLimitOut:
    return RateLimitOut.model_validate(await service.replace(session, rule_id, body))


@router.delete("/{rule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_404)
async def delete_rate_limit(rule_id: str, session: SessionDep, _: AdminDep) -> None:
    await service.delete(session, rule_id)
