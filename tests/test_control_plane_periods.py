"""Budget periods: exact UTC boundaries (pure functions, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.budgets.periods import floor_minute, period_bounds

T = datetime(2026, 11, 27, 21, 5, 33, 123456, tzinfo=UTC)  # a Friday


def test_calendar_periods() -> None:
    assert period_bounds("day", T) == (
        datetime(2026, 11, 27, tzinfo=UTC),
        datetime(2026, 11, 28, tzinfo=UTC),
    )
    assert period_bounds("week", T) == (
        datetime(2026, 11, 23, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert period_bounds("month", T) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    dec = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert period_bounds("month", dec)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_bounds("day", dec)[1] == datetime(2027, 1, 1, tzinfo=UTC)


def test_boundaries_belong_to_the_new_period() -> None:
    midnight = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday
    assert period_bounds("week", midnight)[0] == midnight
    assert period_bounds("week", midnight - timedelta(microseconds=1))[1] == midnight
    assert period_bounds("month", datetime(2026, 12, 1, tzinfo=UTC))[0] == datetime(
        2026, 12, 1, tzinfo=UTC
    )


def test_other_timezones_are_converted_to_utc() -> None:
    # 01:30 on the 1st in UTC+2 is still the previous month in UTC
    local = datetime(2026, 12, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert period_bounds("month", local)[0] == datetime(2026, 11, 1, tzinfo=UTC)


def test_rolling_window_is_minute_aligned() -> None:
    start, end = period_bounds("rolling", T, rolling_hours=24)
    assert start == datetime(2026, 11, 26, 21, 5, tzinfo=UTC)
    assert end == datetime(2026, 11, 27, 21, 6, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_bounds("rolling", T)
    with pytest.raises(ValueError):
        period_bounds("year", T)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.sampled_from(["day", "week", "month"]),
)
def test_now_is_inside_its_period(naive: datetime, period: str) -> None:
    now = naive.replace(tzinfo=UTC)
    start, end = period_bounds(period, now)
    assert start <= now < end
    assert start.hour == start.minute == start.second == start.microsecond == 0
    assert period_bounds(period, end)[0] == end  # periods tile time without gaps
    if period == "week":
        assert start.weekday() == 0
    if period == "month":
        assert start.day == 1


def test_floor_minute() -> None:
    assert floor_minute(T) == datetime(2026, 11, 27, 21, 5, tzinfo=UTC)
    # naive means UTC, whatever the host's zone
    assert floor_minute(T.replace(tzinfo=None)) == datetime(2026, 11, 27, 21, 5, tzinfo=UTC)
    assert period_bounds("day", T.replace(tzinfo=None))[0] == datetime(2026, 11, 27, tzinfo=UTC)
