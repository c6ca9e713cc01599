"""/api/v1/features"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from control_plane.deps import AdminDep, ReadSessionDep, SessionDep
from control_plane.errors import ERROR_RESPONSES, ErrorBody
from control_plane.features import service
from control_plane.features.repository import FeatureRepository
from control_plane.features.schemas import FeatureCreate, FeatureOut, FeatureUpdate
from control_plane.pagination import Page, PageDep

router = APIRouter(prefix="/api/v1/features", tags=["features"], responses=ERROR_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown feature"}
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "Name taken"}},
)
async def create_feature(body: FeatureCreate, session: SessionDep, _: AdminDep) -> FeatureOut:
    return FeatureOut.model_validate(await service.create(session, body))


@router.get("")
async def list_features(session: ReadSessionDep, _: AdminDep, page: PageDep) -> Page[FeatureOut]:
    rows, total = await FeatureRepository(session).list(page.limit, page.offset)
    return Page[FeatureOut](
        items=[FeatureOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{name}", responses=_404)
async def get_feature(name: str, session: ReadSessionDep, _: AdminDep) -> FeatureOut:
    return FeatureOut.model_validate(await service.get(session, name))


@router.patch("/{name}", responses=_404)
async def update_feature(
    name: str, body: FeatureUpdate, session: SessionDep, _: AdminDep
) -> FeatureOut:
    return FeatureOut.model_validate(await service.update(session, name, body))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_404)
async def delete_feature(name: str, session: SessionDep, _: AdminDep) -> None:
    await service.delete(session, name)
