"""GET /api/v1/sidecar/policy: the versioned snapshot sidecars poll with If-None-Match."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from control_plane.deps import ReadSessionDep, SettingsDep, SidecarDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.policy.service import build_snapshot
from gpuledger.contracts import PolicySnapshot

router = APIRouter(prefix="/api/v1/sidecar", tags=["sidecar"], responses=ERROR_RESPONSES)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {part.strip().removeprefix("W/") for part in header.split(",")}
    return etag in candidates or "*" in candidates


@router.get(
    "/policy",
    response_model=PolicySnapshot,
    responses={304: {"description": "Unchanged since the ETag sent in If-None-Match"}},
)
async def get_policy(
    session: ReadSessionDep,
    settings: SettingsDep,
    _: SidecarDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The policy snapshot; `ETag` is `"<version>"`, and a matching If-None-Match gets 304."""
    snapshot = await build_snapshot(session, settings.policy_budget_bucket_gpu_seconds)
    etag = f'"{snapshot.version}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(
        content=snapshot.model_dump_json(), media_type="application/json", headers=headers
    )
