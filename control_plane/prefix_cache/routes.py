"""/api/v1/reports/prefix-cache"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.deps import AdminDep, ReadSessionDep, SettingsDep
from control_plane.errors import ERROR_RESPONSES
from control_plane.pagination import TimeRangeDep
from control_plane.prefix_cache import service
from control_plane.prefix_cache.schemas import PrefixCacheReport

router = APIRouter(prefix="/api/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)


@router.get("/prefix-cache")
async def prefix_cache(
    session: ReadSessionDep,
    settings: SettingsDep,
    _: AdminDep,
    window: TimeRangeDep,
    feature: Annotated[str | None, Query(description="restrict to one feature")] = None,
) -> PrefixCacheReport:
    """Features whose prompts rarely share an opening, so vLLM's prefix cache cannot help them,
    with the prefill GPU-seconds that costs (an upper bound), from the per-minute rollups.
    Default window: the last 24 hours."""
    return await service.prefix_cache_report(session, settings, window.start, window.end, feature)
