"""The prefix-cache report: features whose prompts rarely share an opening, from raw records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.prefix_cache.schemas import PrefixCacheReport
from gpuledger.contracts import UsageRecord
from tests.control_plane_support import (
    admin_client,
    control_plane_fixture,
    db_url_fixture,
    make_record,
    post_usage,
    seed_policy,
)

__all__ = ["control_plane_fixture", "db_url_fixture"]

PREFILL_S_PER_TOKEN = 1e-4  # control_plane.settings default
BLOCK = 16


def _opened(record: UsageRecord, opening: str | None) -> UsageRecord:
    return record.model_copy(update={"prompt_opening": opening})


def _report(base_url: str, **params: str) -> PrefixCacheReport:
    with admin_client(base_url) as client:
        resp = client.get("/api/v1/reports/prefix-cache", params=params)
        resp.raise_for_status()
        return PrefixCacheReport.model_validate(resp.json())


def test_unstable_openings_are_named_and_priced(control_plane: str) -> None:
    seed_policy(control_plane)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    stable = [
        _opened(make_record(feature="support-bot", input_tokens=300, started_at=hour_ago), "a" * 16)
        for _ in range(30)
    ]
    stamped = [
        _opened(
            make_record(feature="code-review", input_tokens=300 + i, started_at=hour_ago),
            f"{i:016x}",
        )
        for i in range(30)
    ]
    few = [
        _opened(make_record(feature="summarizer", started_at=hour_ago), f"{i + 100:016x}")
        for i in range(5)
    ]
    unhashed = [make_record(feature="support-bot", started_at=hour_ago) for _ in range(7)]
    old = [
        _opened(
            make_record(feature="code-review", started_at=hour_ago - timedelta(days=3)), "b" * 16
        )
    ]
    post_usage(control_plane, [*stable, *stamped, *few, *unhashed, *old])
    post_usage(control_plane, stamped)  # a replayed batch is not counted twice

    report = _report(control_plane)
    rows = {r.feature: r for r in report.rows}
    assert report.rows[0].feature == "code-review"  # most wasteful first
    review = rows["code-review"]
    assert (review.requests, review.distinct_openings, review.one_off_requests) == (30, 30, 30)
    assert (
        review.unstable and review.unstable_ratio == 1.0 and "move static content" in review.advice
    )
    whole_blocks = sum((r.input_tokens // BLOCK) * BLOCK for r in stamped)
    assert review.wasted_prefill_gpu_seconds == pytest.approx(whole_blocks * PREFILL_S_PER_TOKEN)
    usd_per_gpu_s = sum(r.cost_usd for r in stamped) / sum(r.gpu_seconds for r in stamped)
    assert review.wasted_prefill_usd == pytest.approx(
        review.wasted_prefill_gpu_seconds * usd_per_gpu_s
    )

    support = rows["support-bot"]  # records from sidecars without the hash do not count
    assert (support.requests, support.distinct_openings, support.one_off_requests) == (30, 1, 0)
    assert not support.unstable and support.wasted_prefill_gpu_seconds == 0 and support.advice == ""
    expected_hit = sum(r.cached_input_tokens for r in stable) / sum(r.input_tokens for r in stable)
    assert support.observed_cache_hit_ratio == pytest.approx(expected_hit)

    summarizer = rows["summarizer"]  # all distinct, but too few requests to judge
    assert summarizer.unstable_ratio == 1.0 and not summarizer.unstable

    only = _report(control_plane, feature="support-bot")
    assert [r.feature for r in only.rows] == ["support-bot"]
    week = _report(control_plane, start=(hour_ago - timedelta(days=4)).isoformat())
    assert {r.feature: r.requests for r in week.rows}["code-review"] == 31


def test_a_window_over_seven_days_is_refused(control_plane: str) -> None:
    now = datetime.now(UTC)
    with admin_client(control_plane) as client:
        resp = client.get(
            "/api/v1/reports/prefix-cache",
            params={"start": (now - timedelta(days=8)).isoformat(), "end": now.isoformat()},
        )
    assert resp.status_code == 422
    assert resp.json()["code"] == "invalid_time_range"
