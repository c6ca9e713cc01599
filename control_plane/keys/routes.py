"""/api/v1/keys"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from control_plane.deps import AdminDep, ReadSessionDep, SessionDep
from control_plane.errors import ERROR_RESPONSES, ErrorBody
from control_plane.keys import service
from control_plane.keys.repository import KeyRepository
from control_plane.keys.schemas import KeyCreate, KeyOut, KeyUpdate, KeyWithSecret
from control_plane.models import ApiKey
from control_plane.pagination import Page, PageDep

router = APIRouter(prefix="/api/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Unknown key"}}
_409: dict[int | str, dict[str, Any]] = {409: {"model": ErrorBody, "description": "Key is revoked"}}


def _with_secret(key: ApiKey, secret: str) -> KeyWithSecret:
    return KeyWithSecret(**KeyOut.model_validate(key).model_dump(), secret=secret)


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_key(body: KeyCreate, session: SessionDep, _: AdminDep) -> KeyWithSecret:
    """Create a key. The response carries the secret; it is never shown again."""
    key, secret = await service.create(session, body)
    return _with_secret(key, secret)


@router.get("")
async def list_keys(
    session: ReadSessionDep,
    _: AdminDep,
    page: PageDep,
    include_revoked: Annotated[bool, Query()] = True,
) -> Page[KeyOut]:
    rows, total = await KeyRepository(session).list(
        limit=page.limit, offset=page.offset, include_revoked=include_revoked
    )
    return Page[KeyOut](
        items=[KeyOut.model_validate(r) for r in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{key_id}", responses=_404)
async def get_key(key_id: str, session: ReadSessionDep, _: AdminDep) -> KeyOut:
    return KeyOut.model_validate(await service.get(session, key_id))


@router.patch("/{key_id}", responses={**_404, **_409})
async def update_key(key_id: str, body: KeyUpdate, session: SessionDep, _: AdminDep) -> KeyOut:
    return KeyOut.model_validate(await service.update(session, key_id, body))


@router.post("/{key_id}/rotate", responses={**_404, **_409})
async def rotate_key(key_id: str, session: SessionDep, _: AdminDep) -> KeyWithSecret:
    """Replace the secret (same key id); the new secret is shown once."""
    key, secret = await service.rotate(session, key_id)
    return _with_secret(key, secret)


@router.post("/{key_id}/revoke", responses=_404)
async def revoke_key(key_id: str, session: SessionDep, _: AdminDep) -> KeyOut:
    return KeyOut.model_validate(await service.revoke(session, key_id))
