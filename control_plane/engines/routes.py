"""/api/v1/engines"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from control_plane.deps import AdminDep, ReadSessionDep, SessionDep
from control_plane.engines import service
from control_plane.engines.repository import EngineRepository
from control_plane.engines.schemas import EngineIn, EngineOut
from control_plane.errors import ERROR_RESPONSES, ErrorBody

router = APIRouter(prefix="/api/v1/engines", tags=["engines"], responses=ERROR_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown engine"}}
EngineName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


@router.get("")
async def list_engines(session: ReadSessionDep, _: AdminDep) -> list[EngineOut]:
    return [EngineOut.model_validate(e) for e in await EngineRepository(session).list()]


@router.get("/{name}", responses=_404)
async def get_engine(name: EngineName, session: ReadSessionDep, _: AdminDep) -> EngineOut:
    return EngineOut.model_validate(await service.get(session, name))


@router.put("/{name}")
async def put_engine(
    name: EngineName, body: EngineIn, session: SessionDep, _: AdminDep
) -> EngineOut:
    """Create or replace an engine (the name is what usage records carry as `upstream`)."""
    return EngineOut.model_validate(await service.put(session, name, body))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_404)
async def delete_engine(name: EngineName, session: SessionDep, _: AdminDep) -> None:
    await service.delete(session, name)
