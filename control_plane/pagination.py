"""Offset pagination and time-range filters shared by the list endpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, Field

from control_plane.errors import Unprocessable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="rows matching the filters, ignoring limit/offset")
    limit: int
    offset: int


class PageParams(BaseModel):
    limit: int
    offset: int


class TimeRange(BaseModel):
    start: datetime | None
    end: datetime | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, description="rows to skip")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


def time_range(
    start: Annotated[
        datetime | None, Query(description="inclusive lower bound, ISO 8601 (UTC if naive)")
    ] = None,
    end: Annotated[datetime | None, Query(description="exclusive upper bound, ISO 8601")] = None,
) -> TimeRange:
    start = start.replace(tzinfo=UTC) if start and start.tzinfo is None else start
    end = end.replace(tzinfo=UTC) if end and end.tzinfo is None else end
    if start and end and end <= start:
        raise Unprocessable("`end` must be after `start`", code="invalid_time_range")
    return TimeRange(start=start, end=end)


PageDep = Annotated[PageParams, Depends(page_params)]
TimeRangeDep = Annotated[TimeRange, Depends(time_range)]
