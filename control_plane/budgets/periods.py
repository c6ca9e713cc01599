"""Budget periods in UTC: calendar day, ISO week (Monday 00:00), calendar month, or rolling hours.

Rollups are per minute, so a rolling window starts at the minute boundary at or before
`now - hours`: the partial oldest minute counts whole (conservative: never under-counts spend).
A rolling budget has no reset; its `period_end` is the next minute boundary, when the oldest
minute leaves the window and some spend frees up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PERIODS = ("day", "week", "month", "rolling")


def as_utc(ts: datetime) -> datetime:
    """Naive datetimes are UTC (never the host's local time)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def floor_minute(ts: datetime) -> datetime:
    return as_utc(ts).replace(second=0, microsecond=0)


def period_bounds(
    period: str, now: datetime, rolling_hours: int | None = None
) -> tuple[datetime, datetime]:
    """[start, end) of the period containing `now`."""
    now = as_utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=now.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        return start, end
    if period == "rolling":
        if not rolling_hours or rolling_hours <= 0:
            raise ValueError("a rolling budget needs rolling_hours > 0")
        start = floor_minute(now - timedelta(hours=rolling_hours))
        return start, floor_minute(now) + timedelta(minutes=1)
    raise ValueError(f"unknown period {period!r}")
